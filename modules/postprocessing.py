"""Extras: upscale an image or a batch with one or two upscalers, as A1111's "Extras" tab and
`/sdapi/v1/extra-single-image`, `/extra-batch-images` do.

Per image: `resize_mode` 0 scales by `upscaling_resize`; 1 scales so the image covers `upscaling_resize_w` x
`upscaling_resize_h` and, with `upscaling_crop`, crops it centred to exactly that size. `upscaler_1` "None" skips
upscaling (the image comes back as it was). A second upscaler with `extras_upscaler_2_visibility` > 0 is blended
over the first's result by that fraction. Face restoration (GFPGAN/CodeFormer) is not part of this WebUI: a
visibility above 0 is refused with a message saying so. The text A1111 writes into the PNG's `postprocessing`
chunk (`Postprocess upscale by: 2, Postprocess upscaler: Lanczos`) is returned with each image; saved images keep
the source's `parameters` infotext beside it. Outputs larger than `upscalers.MAX_OUTPUT_SIDE` on a side are refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from modules import images, infotext
from modules.images import read_info_from_image
from modules.upscalers import UpscalerError, UpscalerRegistry, check_output_size, target_size

log = logging.getLogger(__name__)


class ExtrasError(ValueError):
    """A request Extras cannot run; the message names the field."""


@dataclass
class ExtrasSettings:
    """The upscaling settings of one Extras request (A1111 API field names)."""

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False

    def validate(self, registry: UpscalerRegistry) -> None:
        """ExtrasError for face restoration, unknown upscalers or bad sizes."""
        for name in ("gfpgan_visibility", "codeformer_visibility"):
            if float(getattr(self, name) or 0) > 0:
                raise ExtrasError(f"{name}: no face restorer is installed (GFPGAN and CodeFormer are not part of "
                                  "this WebUI); send 0")
        if self.resize_mode not in (0, 1):
            raise ExtrasError(f"resize_mode must be 0 (scale by) or 1 (scale to), got {self.resize_mode!r}")
        for name in ("upscaler_1", "upscaler_2"):
            value = getattr(self, name)
            if value not in (None, "", "None"):
                try:
                    registry.find(value)
                except UpscalerError as exc:
                    raise ExtrasError(f"{name}: {exc}") from exc
        if self.resize_mode == 1:
            check_output_size(int(self.upscaling_resize_w), int(self.upscaling_resize_h))


def upscale_one(registry: UpscalerRegistry, image: Image.Image, upscaler: str, settings: ExtrasSettings,
                info: dict[str, Any]) -> Image.Image:
    """`image` through one upscaler by the settings' size rule; fills A1111's `Postprocess ...` entries."""
    if settings.resize_mode == 1:
        scale = max(settings.upscaling_resize_w / image.width, settings.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{settings.upscaling_resize_w}x{settings.upscaling_resize_h}"
    else:
        scale = float(settings.upscaling_resize)
        info["Postprocess upscale by"] = scale
    width, height = target_size(image, scale)
    check_output_size(width, height)
    result = registry.upscale(image, upscaler, scale)
    if settings.resize_mode == 1 and settings.upscaling_crop:
        cropped = Image.new("RGB", (settings.upscaling_resize_w, settings.upscaling_resize_h))
        cropped.paste(result, box=(settings.upscaling_resize_w // 2 - result.width // 2,
                                   settings.upscaling_resize_h // 2 - result.height // 2))
        result = cropped
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def run_extras(registry: UpscalerRegistry, image: Image.Image, settings: ExtrasSettings) -> tuple[Image.Image, str]:
    """One image through the Extras steps; returns (the result, its `postprocessing` text)."""
    info: dict[str, Any] = {}
    result = image.convert("RGB")
    first = settings.upscaler_1
    if first not in (None, "", "None"):
        try:
            upscaled = upscale_one(registry, result, first, settings, info)
            info["Postprocess upscaler"] = registry.find(first).name
            second = settings.upscaler_2
            if second not in (None, "", "None") and settings.extras_upscaler_2_visibility > 0:
                other = upscale_one(registry, result, second, settings, info)
                if other.size != upscaled.size:
                    other = other.resize(upscaled.size, Image.Resampling.LANCZOS)
                upscaled = Image.blend(upscaled, other, float(settings.extras_upscaler_2_visibility))
                info["Postprocess upscaler 2"] = registry.find(second).name
                info["Postprocess upscaler 2 visibility"] = settings.extras_upscaler_2_visibility
        except UpscalerError as exc:
            raise ExtrasError(str(exc)) from exc
        result = upscaled
    return result, infotext.format_params(info)


def save_extras_image(folder: Path, source: Image.Image, result: Image.Image, text: str,
                      pnginfo_enabled: bool = True) -> Path:
    """Save `result` as `folder/NNNNN.png` with the source's infotext and the `postprocessing` text."""
    source_info, _ = read_info_from_image(source)
    return images.save_image(result, folder, infotext=source_info, pnginfo_enabled=pnginfo_enabled,
                             extra={"postprocessing": text} if text else None)


def extras_folder(webui: Any) -> Path:
    """outputs/extras-images, or option `outdir_extras_samples` when it is set."""
    key = "outdir_extras_samples"
    custom = webui.options.get(key) if key in webui.options.infos else None
    return Path(custom) if custom else Path(webui.paths.outputs_dir) / "extras-images"
