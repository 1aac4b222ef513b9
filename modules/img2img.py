"""img2img and inpainting: `StableDiffusionProcessingImg2Img`, the txt2img processing object with init images.

It is a subclass of `modules.processing.StableDiffusionProcessingTxt2Img` (prompts, LoRA tags and schedules, seeds,
encoding, the sampling loop, infotext and saving are that class's code) that overrides the mode hooks:

* `init`: A1111's image preparation. Each init image is flattened to RGB and brought to width x height by
  `resize_mode` (0 just resize, 1 crop and resize, 2 resize and fill, 3 just resize in latent space). With a mask
  (white = repaint): binary mask (alpha of a transparent RGBA mask), inverted for "Inpaint not masked"
  (`inpainting_mask_invert`), Gaussian-blurred by `mask_blur_x`/`mask_blur_y`; "only masked"
  (`inpaint_full_res`) crops the mask's bounding box grown by `inpaint_full_res_padding` and stretched to the
  processing aspect ratio, processes it at width x height and pastes it back into the full-size original.
  Masked content (`inpainting_fill`): 0 fill (blurred surrounding colours painted in before encoding), 1 original,
  2 latent noise (the seed's noise in the masked latents), 3 latent nothing (zeros there).
  A mask of another size than the init image is stretched to the init image's size first (decision: A1111 resizes
  image and mask to the processing size independently, which misaligns them when their aspect ratios differ).
* `sample`: the init latents are noised to the timestep where `denoising_strength` enters the schedule and the
  last `int(denoising_strength * steps)` steps run (A1111's count). With a mask, after every step the original's
  latents, noised to the next timestep, replace the latents outside the mask, and the end result keeps the
  original latents there (diffusers' inpainting blend). Inpainting checkpoints (9-channel UNet) get the mask and
  the masked image's latents as their 5 extra input channels, as A1111 builds them.
* `postprocess_image`: the decoded image is composited under the original outside the (blurred) mask.

`latent_mask` (A1111), when given with a mask, is the mask used for masked content and the latent blend instead of
the (blurred) mask, which still decides the final composite. `initial_noise_multiplier` scales the noise added to
the init latents (infotext `Noise multiplier`).
`image_cfg_scale` is accepted and has no effect (it is for instruct-pix2pix models, which this WebUI does not load).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modules import extra_networks, masking, sd_samplers
from modules.processing import (
    Denoiser,
    ProcessingError,
    StableDiffusionProcessingTxt2Img,
    batch_noise,
    encode_tensors,
    first_pass_inputs,
    first_pass_scheduler,
    image_noise,
    images_to_tensor,
    inpainting_conditioning,
    sampler_generators,
    vae_scale_factor,
)
from modules.prompt_encoding import PromptEncoder
from modules.resize import RESIZE_MODES, flatten, resize_image

log = logging.getLogger(__name__)


@dataclass
class StableDiffusionProcessingImg2Img(StableDiffusionProcessingTxt2Img):
    """An img2img / inpainting request (A1111 field names) plus its prepared images, latents and masks."""

    mode: ClassVar[str] = "img2img"

    init_images: list[Image.Image] = field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Image.Image | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None  # sets both mask_blur_x and mask_blur_y when given
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = 1.0
    latent_mask: Image.Image | None = None  # A1111: the mask for masked content and latent blending, if not `mask`

    # Run-time state.
    init_latent: torch.Tensor | None = field(default=None, init=False, repr=False)
    mask_keep: torch.Tensor | None = field(default=None, init=False, repr=False)  # (1, 1, h, w): 1 = original
    image_conditioning: torch.Tensor | None = field(default=None, init=False, repr=False)
    overlay_images: list[Image.Image] = field(default_factory=list, init=False, repr=False)
    paste_to: tuple[int, int, int, int] | None = field(default=None, init=False, repr=False)
    resize_to: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mask_blur is not None:
            self.mask_blur_x = self.mask_blur_y = self.mask_blur
        self.enable_hr = False

    # ---- validation ------------------------------------------------------------------------------------------

    def validate(self, webui: Any) -> None:
        """txt2img's checks plus the img2img fields; a batch of N > 1 init images sets batch_size = N."""
        errors: list[str] = []
        if not self.init_images or not all(isinstance(img, Image.Image) for img in self.init_images):
            errors.append("init_images must hold at least one image")
        elif len(self.init_images) > 1:
            if len(self.init_images) > self.batch_size:
                errors.append(f"init_images: bad number of images passed: {len(self.init_images)}; "
                              f"expecting {self.batch_size} or less")
            else:
                self.batch_size = len(self.init_images)
        checks = (("resize_mode", 0, 3), ("inpainting_fill", 0, 3), ("inpainting_mask_invert", 0, 1))
        for name, low, high in checks:
            value = getattr(self, name)
            if isinstance(value, bool):
                value = int(value)
                setattr(self, name, value)
            if not isinstance(value, int) or not low <= value <= high:
                errors.append(f"{name} must be an integer from {low} to {high}, got {value!r}")
        for name in ("mask_blur_x", "mask_blur_y", "inpaint_full_res_padding"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 256:
                errors.append(f"{name} must be an integer from 0 to 256, got {value!r}")
        multiplier = self.initial_noise_multiplier
        if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or not math.isfinite(multiplier) \
                or not 0 <= multiplier <= 1.5:
            errors.append(f"initial_noise_multiplier must be between 0 and 1.5, got {self.initial_noise_multiplier!r}")
        if self.mask is not None and not isinstance(self.mask, Image.Image):
            errors.append("mask must be an image")
        try:
            super().validate(webui)
        except ProcessingError as exc:
            errors.append(str(exc))
        if errors:
            raise ProcessingError("; ".join(errors))

    # ---- preparation -----------------------------------------------------------------------------------------

    def init(self, webui: Any, model: Any) -> None:
        """Resize the init images, prepare the mask, encode the init latents (see the module docstring)."""
        if getattr(model, "is_flux", False):  # decision: Flux runs txt2img (and hires fix) only, for now
            raise ProcessingError("img2img and inpainting are not available for Flux models yet; use txt2img")
        extra = self.extra_generation_params
        extra["Denoising strength"] = self.denoising_strength
        if self.initial_noise_multiplier != 1.0:
            extra["Noise multiplier"] = self.initial_noise_multiplier
        factor = vae_scale_factor(model)
        self.overlay_images, self.paste_to, self.resize_to = [], None, None
        images = [flatten(img) for img in self.init_images]
        crop_box = None
        image_mask = mask_for_overlay = None
        if self.mask is not None:
            source = self.mask if self.mask.size == images[0].size else self.mask.resize(images[0].size)
            image_mask = masking.prepare_mask(source, bool(self.inpainting_mask_invert), self.mask_blur_x,
                                              self.mask_blur_y, self.mask_round)
            if self.inpainting_mask_invert:
                extra["Mask mode"] = "Inpaint not masked"
            if self.mask_blur_x > 0 or self.mask_blur_y > 0:
                extra["Mask blur"] = self.mask_blur_x if self.mask_blur_x == self.mask_blur_y else None
            if self.inpaint_full_res:
                region = masking.crop_region(image_mask, self.inpaint_full_res_padding)
                if region is None:
                    extra_networks.add_comment(self, "Unable to perform Only masked inpainting because the mask is "
                                                     "blank; the whole picture was processed instead.")
                    image_mask = None
                else:
                    mask_for_overlay = image_mask
                    crop_box = masking.expand_crop_region(region, self.width, self.height, image_mask.width,
                                                          image_mask.height)
                    x1, y1, x2, y2 = crop_box
                    image_mask = resize_image(2, image_mask.crop(crop_box), self.width, self.height)
                    self.paste_to = (x1, y1, x2 - x1, y2 - y1)
                    extra["Inpaint area"] = "Only masked"
                    extra["Masked area padding"] = self.inpaint_full_res_padding
            if image_mask is not None and mask_for_overlay is None:
                image_mask = resize_image(self.resize_mode, image_mask, self.width, self.height).convert("L")
                doubled = np.clip(np.asarray(image_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
                mask_for_overlay = Image.fromarray(doubled, "L")
        latent_mask = image_mask
        if image_mask is not None and self.latent_mask is not None:
            latent_mask = masking.binary_mask(self.latent_mask, self.mask_round).resize(images[0].size)
            if crop_box is not None:
                latent_mask = resize_image(2, latent_mask.crop(crop_box), self.width, self.height)
            else:
                latent_mask = resize_image(self.resize_mode, latent_mask, self.width, self.height).convert("L")

        upscale = _img2img_upscale(webui)
        prepared: list[Image.Image] = []
        for image in images:
            if crop_box is None and self.resize_mode != 3:
                image = resize_image(self.resize_mode, image, self.width, self.height, upscale)
            if image_mask is not None and mask_for_overlay is not None:
                overlay_mask = mask_for_overlay
                if overlay_mask.size != image.size:
                    overlay_mask = overlay_mask.resize(image.size)
                overlay = masking.overlay_image(image, overlay_mask)
                if self.resize_mode == 3 and crop_box is None:  # the result has the processing size
                    overlay = overlay.resize((self.width, self.height))
                self.overlay_images.append(overlay)
            if crop_box is not None:
                image = resize_image(2, image.crop(crop_box), self.width, self.height, upscale)
            if latent_mask is not None and self.inpainting_fill != 1:
                image = masking.fill(image, latent_mask)
                if self.inpainting_fill == 0:
                    extra["Masked content"] = "fill"
            if self.resize_mode == 3 and crop_box is None:
                size = (max(image.width // factor * factor, factor), max(image.height // factor * factor, factor))
                if image.size != size:
                    image = image.resize(size, Image.Resampling.LANCZOS)
            prepared.append(image)
        if len(prepared) == 1 and self.batch_size > 1:
            prepared = prepared * self.batch_size
            self.overlay_images = self.overlay_images * self.batch_size

        pixels = images_to_tensor(prepared)
        latents = encode_tensors(model, pixels).cpu()
        if self.resize_mode == 3 and crop_box is None:
            latents = F.interpolate(latents, size=(self.height // factor, self.width // factor), mode="bilinear")
        self.mask_keep = None
        if latent_mask is not None:
            small = latent_mask.convert("L").resize((latents.shape[3], latents.shape[2]), Image.Resampling.BICUBIC)
            repaint = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
            if self.mask_round:
                repaint = torch.round(repaint)
            repaint = repaint[None, None]
            self.mask_keep = 1.0 - repaint
            if self.inpainting_fill == 2:
                noise = torch.stack([image_noise(tuple(latents.shape[1:]), seed)[0]  # type: ignore[arg-type]
                                     for seed in self.all_seeds[:latents.shape[0]]])
                latents = latents * self.mask_keep + noise * repaint
                extra["Masked content"] = "latent noise"
            elif self.inpainting_fill == 3:
                latents = latents * self.mask_keep
                extra["Masked content"] = "latent nothing"
        self.init_latent = latents
        self.image_conditioning = None
        if model.is_inpainting:
            mask_tensor = None
            if image_mask is not None:
                array = np.asarray(image_mask.convert("L").resize((pixels.shape[3], pixels.shape[2])),
                                   dtype=np.float32) / 255.0
                mask_tensor = torch.from_numpy(array)[None, None]
                if self.mask_round:
                    mask_tensor = torch.round(mask_tensor)
            self.image_conditioning = inpainting_conditioning(
                model, pixels, mask_tensor, (latents.shape[2], latents.shape[3]))

    # ---- sampling --------------------------------------------------------------------------------------------

    def sample(self, webui: Any, model: Any, denoiser: Denoiser, encoder: PromptEncoder) -> torch.Tensor:
        """Noise the init latents to where `denoising_strength` enters the schedule and denoise from there."""
        assert self.init_latent is not None, "init() prepares the init latents"
        inputs = first_pass_inputs(webui, self, encoder)
        inputs.image_conditioning = self.image_conditioning
        device = model.device
        init = self.init_latent[:len(self.prompts)].to(device)
        factor = vae_scale_factor(model)
        noise, generators = batch_noise(self, tuple(init.shape[1:]), factor)  # type: ignore[arg-type]
        generators = sampler_generators(webui, generators, self.seeds)
        noise = noise.to(device)
        keep = self.mask_keep.to(device) if self.mask_keep is not None else None
        t_enc = int(min(self.denoising_strength, 0.999) * self.steps)
        if t_enc <= 0:
            return init
        scheduler = first_pass_scheduler(webui, self, model)
        try:
            timesteps = sd_samplers.img2img_timesteps(scheduler, t_enc, self.denoising_strength, device,
                                                      total=self.steps)
        except ValueError as exc:  # e.g. LCM: fewer schedule steps than asked at this denoising strength
            raise ProcessingError(f"img2img with sampler {self.sampler_name}: {exc}") from exc
        latents = scheduler.add_noise(init, noise * self.initial_noise_multiplier, timesteps[:1])
        if keep is not None:
            def blend(x: torch.Tensor, index: int) -> torch.Tensor:
                original = scheduler.add_noise(init, noise, timesteps[index:index + 1])
                return original * keep + x * (1.0 - keep)

            inputs.after_step = blend
        result = denoiser.run(scheduler, timesteps, latents, inputs, generators, "Sampling")
        if keep is not None:
            result = init * keep + result * (1.0 - keep)
        return result

    def postprocess_image(self, image: Image.Image, index: int) -> Image.Image:
        """Composite the generated image under the original outside the mask (A1111's overlay)."""
        if not self.overlay_images:
            return image
        overlay = self.overlay_images[index % len(self.overlay_images)]
        return masking.apply_overlay(image, self.paste_to, overlay)


def _img2img_upscale(webui: Any) -> Any:
    """The upscaler of option `upscaler_for_img2img` (A1111) as `resize_image` wants it, or None for Lanczos."""
    if "upscaler_for_img2img" not in webui.options.infos:
        return None
    name = webui.options.get("upscaler_for_img2img")
    if not name or name == "None":
        return None
    registry = webui.upscalers
    try:
        entry = registry.find(name)
    except ValueError:
        log.warning("upscaler_for_img2img %r is not installed; resizing with Lanczos", name)
        return None
    return lambda image, width, height: registry.upscale_to(image, entry, width, height)


__all__ = ["RESIZE_MODES", "StableDiffusionProcessingImg2Img"]
