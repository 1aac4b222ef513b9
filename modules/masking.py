"""Inpainting masks as A1111 prepares them: binary mask, blur, "only masked" crop region, masked-content fill and
the final composite of the generated pixels over the original outside the mask.

White (255) in a mask means "repaint here". All functions take and return PIL images (mode "L" for masks).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy.ndimage import convolve1d

from modules.resize import resize_image

MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")


def binary_mask(image: Image.Image, round_values: bool = True) -> Image.Image:
    """Mode "L" mask. An RGBA image whose alpha is not fully opaque gives its alpha channel (thresholded at 128
    when `round_values`), as a painted-over transparent layer from a browser or painting program; anything else
    is converted to grey levels."""
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.split()[-1].convert("L")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round_values else alpha
    return image.convert("L")


def gaussian_kernel(sigma: float) -> np.ndarray:
    """OpenCV's Gaussian kernel for `sigma` with A1111's size `2 * int(2.5 * sigma + 0.5) + 1` (sums to 1)."""
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x ** 2) / (2.0 * sigma * sigma))
    return kernel / kernel.sum()


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """Separable Gaussian blur: `blur_x` along rows, then `blur_y` along columns (mirror borders, as OpenCV's
    default BORDER_REFLECT_101), rounded to 8-bit."""
    array = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        array = convolve1d(array, gaussian_kernel(blur_x), axis=1, mode="mirror")
    if blur_y > 0:
        array = convolve1d(array, gaussian_kernel(blur_y), axis=0, mode="mirror")
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), "L")


def prepare_mask(mask: Image.Image, invert: bool, blur_x: float, blur_y: float,
                 round_values: bool = True) -> Image.Image:
    """Binary mask, inverted for "Inpaint not masked", then blurred."""
    result = binary_mask(mask, round_values)
    if invert:
        result = ImageOps.invert(result)
    if blur_x > 0 or blur_y > 0:
        result = blur_mask(result, blur_x, blur_y)
    return result


def crop_region(mask: Image.Image, padding: int = 0) -> tuple[int, int, int, int] | None:
    """The box (x1, y1, x2, y2) around the mask's non-zero pixels, grown by `padding` within the image; None for
    an empty mask."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    if not padding:
        return box
    return max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, mask.width), min(y2 + padding, mask.height)


def expand_crop_region(region: tuple[int, int, int, int], width: int, height: int, image_width: int,
                       image_height: int) -> tuple[int, int, int, int]:
    """Grow `region` to the aspect ratio of the `width` x `height` the crop is processed at, keeping it inside
    the image (A1111's `expand_crop_region`)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        diff = int((x2 - x1) / (width / height) - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            y1 -= y2 - image_height
            y2 = image_height
        if y1 < 0:
            y2 -= y1
            y1 = 0
        y2 = min(y2, image_height)
    else:
        diff = int((y2 - y1) * (width / height) - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            x1 -= x2 - image_width
            x2 = image_width
        if x1 < 0:
            x2 -= x1
            x1 = 0
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area painted with ever less blurred colours of its surroundings."""
    result = Image.new("RGBA", image.size)
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def overlay_image(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The original picture made transparent where it is repainted (RGBA), to lay over a generated image."""
    overlay = Image.new("RGBa", image.size)
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert("L")))
    return overlay.convert("RGBA")


def apply_overlay(generated: Image.Image, paste_box: tuple[int, int, int, int] | None,
                  overlay: Image.Image | None) -> Image.Image:
    """The generated image composited under `overlay` (A1111's `apply_overlay`); with `paste_box` (x, y, w, h)
    the generated crop is first resized into that box of a canvas of the overlay's size ("only masked")."""
    if overlay is None:
        return generated
    if paste_box is not None:
        x, y, w, h = paste_box
        canvas = Image.new("RGBA", overlay.size)
        canvas.paste(resize_image(1, generated, w, h), (x, y))
        generated = canvas
    result = generated.convert("RGBA")
    result.alpha_composite(overlay)
    return result.convert("RGB")
