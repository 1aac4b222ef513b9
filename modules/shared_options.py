"""Options the host registers (sections as in A1111's Settings tab). Extensions add theirs in `setup(webui)`."""

from __future__ import annotations

from typing import Any


def register_host_options(webui: Any) -> None:
    """Register the host's options on `webui.options`."""
    add = webui.options.add
    add("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "Stable Diffusion")
    add("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12)
    add("eta_ancestral", 1.0, "Eta for ancestral samplers", "Sampler parameters", minimum=0.0, maximum=1.0)
    add("samples_save", True, "Always save all generated images", "Saving images")
    add("samples_format", "png", "File format for images", "Saving images", choices=["png"])
    add("enable_pnginfo", True, "Save text information about generation parameters as chunks to png files",
        "Saving images")
    add("live_previews_enable", True, "Show live previews of the created image", "Live previews")
    add("show_progress_every_n_steps", 1, "Live preview display period (steps)", "Live previews", minimum=1)
