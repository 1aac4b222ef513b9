"""Wiring of the A1111 compatibility parts into one WebUI: the `sd_vae` option (choices from the VAE folder,
changes applied to the loaded model), the read-only `sd_checkpoint_hash`, and the styles' infotext handling.

`connect(webui)` runs once in `WebUI.create`, after the options are registered.
"""

from __future__ import annotations

import logging
from typing import Any

from modules.sd_vae import VaeLoadError
from modules.styles import infotext_pasted_styles

log = logging.getLogger(__name__)


def connect(webui: Any) -> None:
    """Hook the VAE manager and the style database into the options and callbacks of `webui`."""
    options, vae, styles = webui.options, webui.vae, webui.styles
    info = options.infos["sd_vae"]
    info.choices = vae.choices
    applied = {"value": str(options.get("sd_vae"))}

    def sd_vae_changed(value: Any) -> None:
        """Apply the new selection to the loaded model; on failure put the option back and re-raise."""
        try:
            vae.apply(webui.models.current if webui.models is not None else None, str(value))
        except VaeLoadError:
            hook, info.onchange = info.onchange, None
            try:  # not saved: this may run inside a generation's override_settings (see processing)
                options.set("sd_vae", applied["value"], save=False)
            finally:
                info.onchange = hook
            raise
        applied["value"] = str(value)

    info.onchange = sd_vae_changed

    def model_loaded(model: Any) -> None:
        vae.on_model_loaded(model)
        sha256 = getattr(model.checkpoint, "sha256", None) or ""
        if options.get("sd_checkpoint_hash") != sha256:
            options.set("sd_checkpoint_hash", sha256, save=False)

    webui.callbacks.add("model_loaded", model_loaded)
    webui.callbacks.add("infotext_pasted", lambda text, params: infotext_pasted_styles(
        styles, str(options.get("infotext_styles")), params))
