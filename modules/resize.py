"""A1111's img2img resize modes for PIL images: fit an image into `width` x `height`.

Modes (the `resize_mode` request field): 0 "Just resize" (stretch), 1 "Crop and resize" (fill the target, crop
the excess, centred), 2 "Resize and fill" (fit inside the target, the empty bands filled by stretching the
image's edge rows/columns), 3 "Just resize (latent upscale)" (the processing encodes the image at its own size
and resizes the latents; for images this module treats it as mode 0).

Pixels are resampled with Lanczos, or with a named upscaler (`upscale`, e.g. the registry's) when the image must
grow, as A1111's `images.resize_image` does with `upscaler_for_img2img`.
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")

Upscale = Callable[[Image.Image, int, int], Image.Image]


def _lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.resize((width, height), resample=Image.Resampling.LANCZOS)


def resize_image(resize_mode: int, image: Image.Image, width: int, height: int,
                 upscale: Upscale | None = None) -> Image.Image:
    """`image` brought to `width` x `height` by `resize_mode` (see the module docstring).

    `upscale(image, w, h)` resizes colour images when given (masks, mode "L", always use Lanczos).
    """
    def resize(im: Image.Image, w: int, h: int) -> Image.Image:
        if upscale is None or im.mode == "L":
            return _lanczos(im, w, h)
        return upscale(im, w, h)

    if resize_mode not in (1, 2):
        return resize(image, width, height)
    ratio = width / height
    src_ratio = image.width / image.height
    mode = "L" if image.mode == "L" else "RGB"
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
        resized = resize(image, src_w, src_h)
        result = Image.new(mode, (width, height))
        result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return result
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = resize(image, src_w, src_h)
    result = Image.new(mode, (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            result.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            result.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            result.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            result.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + src_w, 0))
    return result


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """An RGB image; transparency is composited over `background` (A1111's `img2img_background_color`)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        base.alpha_composite(rgba)
        return base.convert("RGB")
    return image.convert("RGB")
