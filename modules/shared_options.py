"""Options the host registers (sections as in A1111's Settings tab). Extensions add theirs in `setup(webui)`."""

from __future__ import annotations

from typing import Any

from modules import forge_modules


def register_host_options(webui: Any) -> None:
    """Register the host's options on `webui.options`."""
    add = webui.options.add
    add("sd_model_checkpoint", "", "Stable Diffusion checkpoint", "Stable Diffusion")
    forge_modules.register(webui)  # Forge's "VAE / Text Encoder" (forge_additional_modules)
    add("CLIP_stop_at_last_layers", 1, "Clip skip", "Stable Diffusion", minimum=1, maximum=12)
    add("eta_ancestral", 1.0, "Eta for ancestral samplers", "Sampler parameters", minimum=0.0, maximum=1.0)
    add("samples_save", True, "Always save all generated images", "Saving images")
    add("samples_format", "png", "File format for images", "Saving images", choices=["png", "jpg", "jpeg", "webp"])
    add("enable_pnginfo", True, "Save text information about generation parameters as chunks to png files",
        "Saving images")
    add("live_previews_enable", True, "Show live previews of the created image", "Live previews")
    add("show_progress_every_n_steps", 1, "Live preview display period (steps)", "Live previews", minimum=1)
    # Generation (modules/processing.py, modules/prompt_encoding.py, modules/infotext.py)
    add("emphasis", "Original", "Emphasis mode for (word:1.1) weights", "Stable Diffusion",
        choices=["Original", "No norm", "None"])
    add("comma_padding_backtrack", 20, "Prompt word wrap length limit (tokens moved to the next chunk after a comma)",
        "Stable Diffusion", minimum=0, maximum=74)
    add("add_model_hash_to_info", True, "Add model hash to infotext", "Infotext")
    add("add_model_name_to_info", True, "Add model name to infotext", "Infotext")
    add("add_version_to_infotext", True, "Add program version to infotext", "Infotext")
    add("outdir_txt2img_samples", "", "Output directory for txt2img images (empty: outputs/txt2img-images)",
        "Paths for saving")
    # Grids made by scripts (X/Y/Z plot, prompt matrix)
    add("grid_save", True, "Always save all generated image grids", "Saving images")
    add("outdir_txt2img_grids", "", "Output directory for txt2img grids (empty: outputs/txt2img-grids)",
        "Paths for saving")
