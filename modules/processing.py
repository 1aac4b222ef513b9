"""txt2img: the request object, validation, the denoising loop, hires fix, decoding, infotext and saving.

`process_images(webui, p)` runs one request (the caller holds `webui.queue_lock`). Per batch iteration:
extra-network tags are parsed out of the prompts and activated (before the text encoders run, so a LoRA's text
encoder weights are in place), prompts are encoded, latents are made from per-image seeded CPU generators (the
same seed gives the same image on any device), the sampler runs with classifier-free guidance, hires fix
optionally upscales the latents and runs a second pass (with its own prompt, tags and sampler), the VAE decodes,
and every image is saved with its infotext.

Negative prompts: `<lora:...>` tags are removed from them before encoding and never activate anything
(A1111 leaves them in the text and tokenizes them; removing them keeps tag syntax out of the conditioning).
The infotext keeps every prompt exactly as typed, tags included (A1111 behaviour).
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from modules import extra_networks, flux_sampling, image_checks, images, infotext, sampler_table, upscalers
from modules.generation_state import GenerationState
from modules.prompt_encoding import EMPHASIS_MODES, Conditioning, PromptEncoder
from modules.scripts import PostprocessImageArgs
from modules.tiling import circular_padding
from modules.upscalers import UpscalerRegistry

if TYPE_CHECKING:
    from modules.scripts import ScriptRun

log = logging.getLogger(__name__)

# A1111's latent upscale modes: name -> (torch interpolate mode, antialias).
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
USE_SAME_SAMPLER = "Use same sampler"
USE_SAME_SCHEDULER = "Use same scheduler"
MAX_SEED = 4294967294  # -1 picks a random seed below this (A1111)
SEED_LIMIT = 2**64 - 1  # the largest seed a torch generator takes; A1111 accepts any seed up to it

# Linear latent -> RGB approximations for live previews (per latent channel, an RGB contribution).
LATENT_RGB_FACTORS: dict[str, tuple[list[list[float]], list[float]]] = {
    "SD1": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
             [-0.2120, -0.2616, -0.7177]], [0.0, 0.0, 0.0]),
    "SDXL": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
              [-0.3165, -0.2492, -0.2188]], [0.1084, -0.0175, -0.0011]),
}


READ_ONLY_OPTIONS = ("sd_checkpoint_hash",)


class ProcessingError(ValueError):
    """A request that cannot be run; the message says which field is wrong and what is allowed."""


def upscaler_names(registry: UpscalerRegistry | None = None) -> list[str]:
    """Hires upscalers: the latent modes, then the image-space ones of `registry` (decode, upscale, encode again;
    without a registry: the built-in None, Lanczos and Nearest)."""
    return [*LATENT_UPSCALE_MODES, *(registry.names() if registry is not None else upscalers.BUILTIN)]


@dataclass
class StableDiffusionProcessingTxt2Img:
    """A txt2img request (field names = the A1111 API body) plus the run-time state filled while it runs.

    Subclasses (img2img: `modules.img2img.StableDiffusionProcessingImg2Img`) change the steps through the hooks
    `mode`, `init`, `sample` and `postprocess_image`; everything else (prompts, extra networks, seeds, encoding,
    sampling loop, infotext, saving) is this class's, so LoRA tags work the same in every mode.
    """

    mode: ClassVar[str] = "txt2img"  # job name, log label, outputs/{mode}-images, option outdir_{mode}_samples

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    clip_skip: int | None = None
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None  # None / "Use same scheduler": the first pass's schedule type
    denoising_strength: float = 0.7
    distilled_cfg_scale: float | None = None  # Flux dev's distilled guidance (Forge's name); None: 3.5
    override_settings: dict[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True  # False: the overrides stay set after the generation
    do_not_save_samples: bool = False
    do_not_save_grid: bool = True
    tiling: bool | None = None  # None: the `tiling` option
    disable_extra_networks: bool = False  # extra-network tags are removed from the prompts but not applied
    # The request's scripts (`modules.scripts.ScriptRun`): the selected one and the always-on ones with their args.
    scripts: ScriptRun | None = field(default=None, repr=False)

    # Run-time state (not request fields).
    comments: list[str] = field(default_factory=list, init=False, repr=False)
    extra_generation_params: dict[str, Any] = field(default_factory=dict, init=False, repr=False)
    sd_model: Any = field(default=None, init=False, repr=False)
    is_hr_pass: bool = field(default=False, init=False, repr=False)
    all_prompts: list[str] = field(default_factory=list, init=False, repr=False)
    all_negative_prompts: list[str] = field(default_factory=list, init=False, repr=False)
    all_hr_prompts: list[str] = field(default_factory=list, init=False, repr=False)
    all_hr_negative_prompts: list[str] = field(default_factory=list, init=False, repr=False)
    all_seeds: list[int] = field(default_factory=list, init=False, repr=False)
    all_subseeds: list[int] = field(default_factory=list, init=False, repr=False)
    iteration: int = field(default=0, init=False, repr=False)
    prompts: list[str] = field(default_factory=list, init=False, repr=False)
    negative_prompts: list[str] = field(default_factory=list, init=False, repr=False)
    seeds: list[int] = field(default_factory=list, init=False, repr=False)
    subseeds: list[int] = field(default_factory=list, init=False, repr=False)
    extra_network_data: dict[str, list[Any]] = field(default_factory=dict, init=False, repr=False)
    hr_extra_network_data: dict[str, list[Any]] = field(default_factory=dict, init=False, repr=False)
    hr_upscale_to_x: int = field(default=0, init=False, repr=False)
    hr_upscale_to_y: int = field(default=0, init=False, repr=False)
    used_schedule: str = field(default="Automatic", init=False, repr=False)
    job_timestamp: str = field(default="", init=False, repr=False)
    _cond_cache: dict[Any, Conditioning] = field(default_factory=dict, init=False, repr=False)
    generation_state: GenerationState = field(default_factory=GenerationState, init=False, repr=False)

    # ---- validation ------------------------------------------------------------------------------------------

    def validate(self, webui: Any) -> None:
        """Check every field; raise ProcessingError naming all problems. Normalises the sampler and schedule
        names (A1111's "DPM++ 2M Karras" becomes sampler "DPM++ 2M" with schedule type "Karras")."""
        errors: list[str] = []
        for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
            if not isinstance(getattr(self, name), str):
                errors.append(f"{name} must be a string, got {type(getattr(self, name)).__name__}")
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 8:
                errors.append(f"{name} must be an integer >= 8, got {value!r}")
            else:
                setattr(self, name, value // 8 * 8)  # A1111 floors sizes to multiples of 8
        for name, minimum in (("steps", 1), ("batch_size", 1), ("n_iter", 1), ("hr_second_pass_steps", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                errors.append(f"{name} must be an integer >= {minimum}, got {value!r}")
        if not _is_finite_number(self.cfg_scale):
            errors.append(f"cfg_scale must be a finite number, got {self.cfg_scale!r}")
        for name in ("denoising_strength", "subseed_strength"):
            value = getattr(self, name)
            if not _is_finite_number(value) or not 0.0 <= float(value) <= 1.0:
                errors.append(f"{name} must be between 0 and 1, got {value!r}")
        for name in ("seed", "subseed", "seed_resize_from_h", "seed_resize_from_w"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                errors.append(f"{name} must be an integer, got {getattr(self, name)!r}")
        for name in ("seed", "subseed"):
            value = getattr(self, name)
            images = self.batch_size * self.n_iter if isinstance(self.batch_size, int) and isinstance(
                self.n_iter, int) else 1
            if isinstance(value, int) and value != -1 and not 0 <= value <= SEED_LIMIT - max(images - 1, 0):
                errors.append(f"{name} must be -1 (random) or between 0 and {SEED_LIMIT} for every image of the "
                              f"request, got {value}")
        if self.clip_skip is not None and (not isinstance(self.clip_skip, int) or self.clip_skip < 1):
            errors.append(f"clip_skip must be an integer >= 1 (or null for the setting), got {self.clip_skip!r}")

        sampler, schedule = sampler_table.resolve_sampler(self.sampler_name, self.scheduler)
        if sampler is None:
            errors.append(f"unknown sampler {self.sampler_name!r}; valid samplers: "
                          + ", ".join(sampler_table.sampler_names()))
        if schedule is None:  # A1111 uses Automatic for a schedule type it does not know (e.g. "normal")
            log.info("unknown scheduler %r; using Automatic", self.scheduler)
            self.comments.append(f"Unknown schedule type {self.scheduler!r}; used Automatic")
            schedule = "Automatic"
        if sampler is not None and schedule is not None:
            self.sampler_name, self.scheduler = sampler.name, schedule
        if sampler is not None and sampler.max_steps is not None and isinstance(self.steps, int) \
                and self.steps > sampler.max_steps:
            errors.append(f"sampler {sampler.name} supports at most {sampler.max_steps} steps, got {self.steps}")
        if self.hr_sampler_name not in (None, "", USE_SAME_SAMPLER):
            hr_sampler, _ = sampler_table.resolve_sampler(self.hr_sampler_name, None)
            if hr_sampler is None:
                errors.append(f"unknown hr_sampler_name {self.hr_sampler_name!r}; valid samplers: "
                              + ", ".join([USE_SAME_SAMPLER, *sampler_table.sampler_names()]))
            else:
                self.hr_sampler_name = hr_sampler.name
        if self.hr_scheduler not in (None, "", USE_SAME_SCHEDULER):
            hr_schedule = sampler_table.find_schedule_type(self.hr_scheduler)
            if hr_schedule is None:  # as for `scheduler`: the first pass's schedule type
                self.comments.append(f"Unknown hires schedule type {self.hr_scheduler!r}; used the first pass's")
                self.hr_scheduler = None
            else:
                self.hr_scheduler = hr_schedule

        if self.enable_hr:
            names = upscaler_names(webui.upscalers)
            if self.hr_upscaler not in names:
                errors.append(f"unknown hr_upscaler {self.hr_upscaler!r}; valid upscalers: " + ", ".join(names))
            for name in ("hr_resize_x", "hr_resize_y"):
                value = getattr(self, name)
                if not isinstance(value, int) or value < 0 or value % 8 != 0:
                    errors.append(f"{name} must be 0 or a positive multiple of 8, got {value!r}")
            if self.hr_resize_x == 0 and self.hr_resize_y == 0 and (
                    not _is_finite_number(self.hr_scale) or not 0 < float(self.hr_scale) <= 8):
                errors.append(f"hr_scale must be a number in (0, 8], got {self.hr_scale!r}")

        options = webui.options
        if not isinstance(self.override_settings, dict):
            errors.append("override_settings must be an object of option names to values")
        else:
            for key, value in list(self.override_settings.items()):
                info = options.infos.get(key)
                if info is None or key in READ_ONLY_OPTIONS:  # ignored, as A1111 clients expect (see README)
                    log.info("override_settings: option %r ignored (%s)", key,
                             "read-only" if info is not None else "unknown here")
                    del self.override_settings[key]
                    continue
                try:
                    info.coerce(value)
                except ValueError as exc:
                    errors.append(f"override_settings: {exc}")
        if errors:
            raise ProcessingError("; ".join(errors))

    # ---- derived values --------------------------------------------------------------------------------------

    def hr_target_size(self) -> tuple[int, int]:
        """(width, height) the hires pass produces (before cropping to hr_resize_x/y), as A1111 computes it."""
        if self.hr_resize_x == 0 and self.hr_resize_y == 0:
            return int(self.width * self.hr_scale), int(self.height * self.hr_scale)
        if self.hr_resize_x == 0:
            return self.hr_resize_y * self.width // self.height, self.hr_resize_y
        if self.hr_resize_y == 0:
            return self.hr_resize_x, self.hr_resize_x * self.height // self.width
        if self.width / self.height < self.hr_resize_x / self.hr_resize_y:
            return self.hr_resize_x, self.hr_resize_x * self.height // self.width
        return self.hr_resize_y * self.width // self.height, self.hr_resize_y

    def effective_hr_sampler(self) -> str:
        """The hires pass's sampler name."""
        return self.sampler_name if self.hr_sampler_name in (None, "", USE_SAME_SAMPLER) else self.hr_sampler_name

    def effective_hr_scheduler(self) -> str:
        """The hires pass's schedule type."""
        return self.scheduler if self.hr_scheduler in (None, "", USE_SAME_SCHEDULER) else self.hr_scheduler

    # ---- hooks of the generation modes --------------------------------------------------------------------------

    def init(self, webui: Any, model: Any) -> None:
        """Mode-specific set-up once prompts and seeds are set (txt2img: nothing)."""

    def sample(self, webui: Any, model: Any, denoiser: Denoiser, encoder: PromptEncoder) -> torch.Tensor:
        """The latents of the current batch (`self.prompts`, `self.seeds`, ...): txt2img's first pass, then the
        hires pass when enabled."""
        latents = _first_pass(webui, self, model, denoiser, encoder)
        if self.enable_hr and not denoiser.interrupted and not webui.state.skipped:
            webui.state.job_no += 1
            latents = _hires_pass(webui, self, model, denoiser, encoder, latents)
        return latents

    def postprocess_image(self, image: Image.Image, index: int) -> Image.Image:
        """A decoded image of the current batch (`index` within it) before it is saved (txt2img: unchanged)."""
        return image


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class Processed:
    """The result of `process_images`: images, their infotexts, and the values the API's `info` JSON reports."""

    images: list[Image.Image]
    infotexts: list[str]
    seed: int
    all_seeds: list[int]
    all_prompts: list[str]
    comments: list[str] = field(default_factory=list)
    interrupted: bool = False
    saved_paths: list[Path] = field(default_factory=list)
    all_negative_prompts: list[str] = field(default_factory=list)
    subseed: int = -1
    all_subseeds: list[int] = field(default_factory=list)
    subseed_strength: float = 0.0
    width: int = 512
    height: int = 512
    sampler_name: str = ""
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    steps: int = 20
    batch_size: int = 1
    sd_model_name: str | None = None
    sd_model_hash: str | None = None
    sd_vae_name: str | None = None
    sd_vae_hash: str | None = None
    seed_resize_from_w: int = -1
    seed_resize_from_h: int = -1
    denoising_strength: float | None = None
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    styles: list[str] = field(default_factory=list)
    job_timestamp: str = ""
    clip_skip: int = 1
    is_using_inpainting_conditioning: bool = False
    index_of_first_image: int = 0  # images before it are grids (scripts such as the X/Y/Z plot put them first)

    @property
    def info(self) -> str:
        """The infotext of the first image (A1111's `processed.info`)."""
        return self.infotexts[0] if self.infotexts else ""

    def js(self) -> str:
        """The A1111 `info` JSON string of the API response."""
        obj = {
            "prompt": self.all_prompts[0] if self.all_prompts else "",
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0] if self.all_negative_prompts else "",
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": self.subseed_strength,
            "width": self.width,
            "height": self.height,
            "sampler_name": self.sampler_name,
            "scheduler": self.scheduler,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": self.sd_model_name,
            "sd_model_hash": self.sd_model_hash,
            "sd_vae_name": self.sd_vae_name,
            "sd_vae_hash": self.sd_vae_hash,
            "seed_resize_from_w": self.seed_resize_from_w,
            "seed_resize_from_h": self.seed_resize_from_h,
            "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "styles": self.styles,
            "job_timestamp": self.job_timestamp,
            "clip_skip": self.clip_skip,
            "is_using_inpainting_conditioning": self.is_using_inpainting_conditioning,
            "version": infotext.VERSION,
            "comments": "".join(f"{comment}\n" for comment in self.comments),
            "interrupted": self.interrupted,
        }
        return json.dumps(obj, default=lambda _: None, ensure_ascii=False)


# ---- seeds and noise ---------------------------------------------------------------------------------------------


def fixed_seed(seed: int | None) -> int:
    """A1111's rule: -1 (or None) means a random seed in [0, 4294967294)."""
    if seed is None or seed == -1:
        return random.randrange(MAX_SEED)
    return int(seed)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two (C, H, W) noise tensors along dim 1, exactly as A1111's variation seeds."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)  # A1111's near-parallel shortcut, weights as A1111 has them
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def _randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def image_noise(
    shape: tuple[int, int, int], seed: int, subseed: int = 0, subseed_strength: float = 0.0,
    noise_shape: tuple[int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Generator]:
    """Initial noise (C, H, W) for one image, on the CPU, and the generator that continues its stream.

    A1111 semantics: variation seed by slerp; `noise_shape` (from "seed resize from") draws the noise at another
    size and pastes it centred into noise of the wanted size, so a seed keeps its composition across sizes.
    """
    noise_shape = noise_shape or shape
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(noise_shape, generator=generator, dtype=torch.float32)
    if subseed_strength != 0:
        noise = slerp(subseed_strength, noise, _randn(subseed, noise_shape))
    if noise_shape != shape:
        full = _randn(seed, shape)
        dx = (shape[2] - noise_shape[2]) // 2
        dy = (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx, ty = max(dx, 0), max(dy, 0)
        sx, sy = max(-dx, 0), max(-dy, 0)
        full[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
        noise = full
    return noise, generator


def batch_noise(p: StableDiffusionProcessingTxt2Img, shape: tuple[int, int, int], factor: int
                ) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Noise (B, C, H, W) for the current batch plus one continuing CPU generator per image."""
    noise_shape = None
    if p.seed_resize_from_h > 0 and p.seed_resize_from_w > 0:
        noise_shape = (shape[0], p.seed_resize_from_h // factor, p.seed_resize_from_w // factor)
    parts, generators = [], []
    for seed, subseed in zip(p.seeds, p.subseeds, strict=True):
        noise, generator = image_noise(shape, seed, subseed, p.subseed_strength, noise_shape)
        parts.append(noise)
        generators.append(generator)
    return torch.stack(parts), generators


def _schedulers() -> Any:
    """`modules.sd_samplers`, imported on first use: it imports diffusers, and this module is imported before serving
    (the scripts import it) where only the sampler names (`modules.sampler_table`) are needed."""
    from modules import sd_samplers  # noqa: PLC0415

    return sd_samplers


# ---- model helpers -----------------------------------------------------------------------------------------------


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def vae_scale_factor(model: Any) -> int:
    """Pixels per latent cell (8 for every real SD VAE)."""
    return 2 ** (len(model.vae.config.block_out_channels) - 1)


def latent_channels(model: Any) -> int:
    """Channels of the VAE's latents (4 for SD1/SD2/SDXL; an inpainting UNet takes 4 + 1 + 4 on its input)."""
    return int(model.vae.config.latent_channels)


def inpainting_conditioning(model: Any, source: torch.Tensor, mask: torch.Tensor | None,
                            latent_size: tuple[int, int], mask_weight: float = 1.0) -> torch.Tensor:
    """The 5 extra input channels of an inpainting (9-channel) UNet, as A1111 builds them: the mask (1 = repaint,
    resized to the latent size) then the VAE latents of the source image with the masked part blanked.

    `source`: (B, 3, H, W) in [-1, 1]; `mask`: (B or 1, 1, H, W) in [0, 1], None = repaint everything;
    `mask_weight` (A1111's `inpainting_mask_weight`) 1 blanks the masked area fully, 0 keeps the whole image.
    Returns (B, 5, h, w) float32 on the CPU.
    """
    if mask is None:
        mask = torch.ones((1, 1, *source.shape[-2:]), dtype=torch.float32)
    blanked = torch.lerp(source, source * (1.0 - mask), mask_weight)
    latents = encode_tensors(model, blanked).cpu()
    small = F.interpolate(mask, size=latent_size).expand(latents.shape[0], -1, -1, -1)
    return torch.cat([small, latents], dim=1)


def txt2img_conditioning(model: Any, batch: int, width: int, height: int) -> torch.Tensor | None:
    """For an inpainting UNet in txt2img: "repaint everything" over a mid-grey image (A1111's choice); None for
    the other models."""
    if not model.is_inpainting:
        return None
    factor = vae_scale_factor(model)
    grey = torch.zeros((batch, 3, height, width), dtype=torch.float32)
    return inpainting_conditioning(model, grey, None, (height // factor, width // factor))


def latent_preview(latent: torch.Tensor, family: str) -> Image.Image:
    """A cheap RGB image of one latent (C, H, W) by a linear map per channel (no VAE)."""
    factors, bias = LATENT_RGB_FACTORS["SDXL" if family == "SDXL" else "SD1"]
    x = torch.nan_to_num(latent.detach().float().cpu(), nan=0.0)  # a NaN latent shows as a flat preview
    if x.shape[0] == len(factors):
        rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors)) + torch.tensor(bias)
    else:
        rgb = x[:3].permute(1, 2, 0)
    rgb = ((rgb + 1.0) / 2.0).clamp(0, 1)
    return Image.fromarray((rgb.numpy() * 255).astype(np.uint8), "RGB")


@torch.no_grad()
def decode_latents(model: Any, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode each latent to a PIL RGB image (float32 retry when half precision overflows to NaN)."""
    vae = model.vae
    scaling = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    results = []
    for latent in latents:
        z = (latent.unsqueeze(0) / scaling + shift).to(device=_device_of(vae), dtype=vae.dtype)
        x = vae.decode(z).sample.float()
        if torch.isnan(x).any() and vae.dtype != torch.float32:
            log.warning("VAE produced NaNs in %s; decoding this image in float32", vae.dtype)
            x = vae.float().decode(z.float()).sample.float()
            vae.to(model.dtype)
        x = ((torch.nan_to_num(x[0], nan=-1.0) + 1.0) / 2.0).clamp(0, 1)  # NaN (a broken LoRA) -> black
        array = (255.0 * x.permute(1, 2, 0).cpu().numpy()).astype(np.uint8)
        results.append(Image.fromarray(array, "RGB"))
    return results


def images_to_tensor(pil_images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) float32 in [-1, 1] from RGB images of one size."""
    arrays = [torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
              for img in pil_images]
    return torch.stack(arrays)


@torch.no_grad()
def encode_tensors(model: Any, x: torch.Tensor) -> torch.Tensor:
    """VAE-encode (B, 3, H, W) pixels in [-1, 1] to scaled latents (the distribution's mean: deterministic)."""
    vae = model.vae
    scaling = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = vae.encode(x.to(device=_device_of(vae), dtype=vae.dtype)).latent_dist.mode().float()
    return (latents - shift) * scaling


def encode_images(model: Any, pil_images: list[Image.Image]) -> torch.Tensor:
    """VAE-encode PIL images to scaled latents (the distribution's mean, so encoding is deterministic)."""
    return encode_tensors(model, images_to_tensor(pil_images))


# ---- the denoising loop ------------------------------------------------------------------------------------------


@dataclass
class PassInputs:
    """What one sampling pass needs besides the latents."""

    cond: Conditioning
    uncond: Conditioning
    cfg_scale: float
    width: int  # output pixel size of this pass (SDXL size conditioning)
    height: int
    # Encodes (cond, uncond) again; called when a step callback changed the text encoders' weights and set
    # `p.generation_state.conditioning_stale` (LoRA text-encoder weight schedules).
    encode: Callable[[], tuple[Conditioning, Conditioning]] | None = None
    # Inpainting UNets: (B, 5, h, w) mask + masked-image latents appended to the UNet input's channels.
    image_conditioning: torch.Tensor | None = None
    # Called after every sampler step but the last with (latents, index of the step's timestep): inpainting
    # with the mask blends the re-noised original back in outside the mask there.
    after_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None


class Denoiser:
    """Runs a diffusers scheduler over the UNet with classifier-free guidance and reports progress."""

    def __init__(self, webui: Any, p: StableDiffusionProcessingTxt2Img, model: Any):
        self.webui, self.p, self.model = webui, p, model
        self.interrupted = False

    def _added_cond_kwargs(self, cond: Conditioning, inputs: PassInputs, batch: int, dtype: torch.dtype
                           ) -> dict[str, Any] | None:
        if not self.model.is_sdxl:
            return None
        size = [inputs.height, inputs.width, 0, 0, inputs.height, inputs.width]
        time_ids = torch.tensor([size] * batch, device=self.model.device, dtype=dtype)
        return {"text_embeds": cond.pooled.to(device=self.model.device, dtype=dtype), "time_ids": time_ids}

    def predict(self, x: torch.Tensor, t: torch.Tensor, inputs: PassInputs, dtype: torch.dtype) -> torch.Tensor:
        """Guided model output for latents `x` (already scaled for the sampler) at timestep `t`; the UNet runs in
        `dtype`, its parameters' dtype (`run` reads it once per pass: diffusers' `ModelMixin.dtype` walks every
        submodule, about 40 ms a call on a full-size SDXL UNet on a CPU)."""
        unet = self.model.unet
        device = self.model.device
        cond, uncond = inputs.cond, inputs.uncond
        if inputs.image_conditioning is not None:
            x = torch.cat([x, inputs.image_conditioning.to(device=x.device, dtype=x.dtype)], dim=1)
        if cond.hidden.shape == uncond.hidden.shape:
            hidden = torch.cat([uncond.hidden, cond.hidden]).to(device=device, dtype=dtype)
            pooled = torch.cat([uncond.pooled, cond.pooled]) if cond.pooled is not None else None
            both = Conditioning(hidden, pooled)
            x_in = torch.cat([x, x]).to(dtype)
            out = unet(x_in, t, encoder_hidden_states=hidden,
                       added_cond_kwargs=self._added_cond_kwargs(both, inputs, x_in.shape[0], dtype)).sample.float()
            out_uncond, out_cond = out.chunk(2)
        else:  # different chunk counts: two UNet calls (A1111's default when conds differ in length)
            results = []
            for c in (uncond, cond):
                results.append(unet(x.to(dtype), t, encoder_hidden_states=c.hidden.to(device=device, dtype=dtype),
                                    added_cond_kwargs=self._added_cond_kwargs(c, inputs, x.shape[0], dtype)
                                    ).sample.float())
            out_uncond, out_cond = results
        return out_uncond + inputs.cfg_scale * (out_cond - out_uncond)

    @torch.no_grad()
    def run(self, scheduler: Any, timesteps: torch.Tensor, latents: torch.Tensor, inputs: PassInputs,
            generators: list[torch.Generator], desc: str) -> torch.Tensor:
        """Sample from `latents` over `timesteps`; returns the final latents (or the last denoised estimate when
        interrupted, as A1111 does)."""
        state, options = self.webui.state, self.webui.options
        order = max(int(getattr(scheduler, "order", 1)), 1)
        total_steps = max(math.ceil(len(timesteps) / order), 1)
        state.sampling_steps, state.sampling_step = total_steps, 0
        schedulers = _schedulers()
        kwargs = schedulers.step_kwargs(scheduler, generators)
        schedulers.attach_cpu_noise(scheduler, latents, self.p.seeds)
        preview_every = max(int(options.get("show_progress_every_n_steps")), 1)
        previews = bool(options.get("live_previews_enable"))
        dtype = self.model.unet.dtype
        x = latents
        denoised = latents
        with tqdm(total=len(timesteps), desc=desc, unit="it", leave=False) as bar:
            for index, t in enumerate(timesteps):
                if state.interrupted or state.skipped:
                    self.interrupted = self.interrupted or state.interrupted
                    x = denoised
                    break
                step = index // order
                self.webui.callbacks.run("process_step", self.p, step, total_steps,
                                         on_error=lambda message: extra_networks.add_comment(self.p, message))
                if self.p.generation_state.conditioning_stale and inputs.encode is not None:
                    inputs.cond, inputs.uncond = inputs.encode()
                    self.p.generation_state.conditioning_stale = False
                x_in = scheduler.scale_model_input(x, t)
                model_output = self.predict(x_in, t, inputs, dtype)
                out = scheduler.step(model_output, t, x, **kwargs)
                x = out.prev_sample
                if inputs.after_step is not None and index + 1 < len(timesteps):
                    x = inputs.after_step(x, index + 1)
                estimate = getattr(out, "pred_original_sample", None)
                denoised = estimate if estimate is not None else x
                state.sampling_step = min(step + 1, total_steps)
                if previews and (index + 1) % (preview_every * order) == 0:
                    state.current_image = latent_preview(denoised[0], self.model.family)
                bar.update(1)
        return x


def upscale_latents(model: Any, latents: torch.Tensor, upscaler: str, width: int, height: int,
                    registry: UpscalerRegistry) -> torch.Tensor:
    """Latents resized to `width` x `height` pixels with a latent mode or an image-space upscaler of `registry`."""
    factor = vae_scale_factor(model)
    size = (height // factor, width // factor)
    if upscaler in LATENT_UPSCALE_MODES:
        mode, antialias = LATENT_UPSCALE_MODES[upscaler]
        kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
        return F.interpolate(latents, size=size, mode=mode, **kwargs)
    entry = registry.find(upscaler)
    pictures = [registry.upscale_to(img, entry, size[1] * factor, size[0] * factor)
                for img in decode_latents(model, latents)]
    return encode_images(model, pictures)


# ---- infotext ----------------------------------------------------------------------------------------------------


def model_name(model: Any) -> str:
    """A1111's `Model:` value: the checkpoint file name without folders and extension."""
    name = Path(model.checkpoint.name)
    return name.stem if model.checkpoint.format == "single-file" else name.name


def generation_params(p: StableDiffusionProcessingTxt2Img, webui: Any, index: int) -> dict[str, Any]:
    """The infotext key/values of image `index` (None values are left out when written)."""
    options = webui.options
    model = p.sd_model
    clip_skip = p.clip_skip if p.clip_skip is not None else int(options.get("CLIP_stop_at_last_layers"))
    params: dict[str, Any] = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.used_schedule,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": (model.checkpoint.short_hash or None) if options.get("add_model_hash_to_info") else None,
        "Model": model_name(model) if options.get("add_model_name_to_info") else None,
        **_vae_infotext(webui, model),
        "Variation seed": None if p.subseed_strength == 0 else p.all_subseeds[index],
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Seed resize from": (None if p.seed_resize_from_w <= 0 or p.seed_resize_from_h <= 0
                             else f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"),
        "Denoising strength": p.extra_generation_params.get("Denoising strength"),
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        "Tiling": True if p.tiling else None,
        "RNG": "CPU",
    }
    emphasis = options.get("emphasis")
    if emphasis != "Original" and infotext.prompt_uses_emphasis(p.all_prompts[index]):
        params["Emphasis"] = emphasis
    params.update(p.extra_generation_params)
    params["Version"] = infotext.VERSION if options.get("add_version_to_infotext") else None
    return params


def _vae_infotext(webui: Any, model: Any) -> dict[str, Any]:
    """`VAE hash` and `VAE` of the separate VAE file applied to `model` (none: the checkpoint's own VAE)."""
    if getattr(webui, "vae", None) is None:
        return {}
    options = webui.options
    return webui.vae.infotext_fields(model, bool(options.get("add_vae_name_to_info")),
                                     bool(options.get("add_vae_hash_to_info")))


def create_infotext(p: StableDiffusionProcessingTxt2Img, webui: Any, index: int) -> str:
    """The A1111 infotext of image `index` (prompts as typed, tags included)."""
    return infotext.format_infotext(p.all_prompts[index], p.all_negative_prompts[index],
                                    generation_params(p, webui, index))


# ---- the whole request -------------------------------------------------------------------------------------------


@contextmanager
def overridden_options(options: Any, overrides: dict[str, Any], restore: bool = True):
    """Apply `override_settings` for the duration of a generation, then restore (without writing config.json).
    With `restore` False (A1111's `override_settings_restore_afterwards: false`) the overrides stay set."""
    previous: dict[str, Any] = {}
    try:
        for key, value in overrides.items():
            current = options.get(key)
            try:
                options.set(key, value, save=False)
            except (KeyError, ValueError) as exc:
                raise ProcessingError(f"override_settings: {exc}") from exc
            previous[key] = current
        yield
    finally:
        for key, value in previous.items() if restore else ():
            try:
                options.set(key, value, save=False)
            except (KeyError, ValueError):
                log.exception("could not restore option %s", key)


def _apply_styles(webui: Any, p: StableDiffusionProcessingTxt2Img) -> None:
    """Merge the request's `styles` (styles.csv) into every prompt, as A1111 does before anything else runs."""
    if not p.styles or getattr(webui, "styles", None) is None:
        return
    database = webui.styles
    database.reload_if_changed()  # an edited styles.csv counts from the next generation on
    _, missing = database.known(p.styles)
    for name in missing:
        extra_networks.add_comment(p, f"Style {name!r} not found in {database.path.name}; skipped")
    p.all_prompts = [database.apply_to_prompt(x, p.styles) for x in p.all_prompts]
    p.all_negative_prompts = [database.apply_to_negative_prompt(x, p.styles) for x in p.all_negative_prompts]
    p.all_hr_prompts = [database.apply_to_prompt(x, p.styles) for x in p.all_hr_prompts]
    p.all_hr_negative_prompts = [database.apply_to_negative_prompt(x, p.styles) for x in p.all_hr_negative_prompts]


def _network_key(data: dict[str, list[Any]]) -> tuple:
    return tuple((kind, tuple(tuple(params.items) for params in plist)) for kind, plist in sorted(data.items()))


def _prepare(p: StableDiffusionProcessingTxt2Img, model: Any) -> None:
    """Fill prompts, seeds, hires sizes and the hires infotext fields (A1111's txt2img set-up)."""
    total = p.batch_size * p.n_iter
    p.sd_model = model
    p.all_prompts = [p.prompt] * total
    p.all_negative_prompts = [p.negative_prompt] * total
    p.all_hr_prompts = [p.hr_prompt or p.prompt] * total
    p.all_hr_negative_prompts = [p.hr_negative_prompt or p.negative_prompt] * total
    seed, subseed = fixed_seed(p.seed), fixed_seed(p.subseed)
    p.seed, p.subseed = seed, subseed
    p.all_seeds = [seed + (i if p.subseed_strength == 0 else 0) for i in range(total)]
    p.all_subseeds = [subseed + i for i in range(total)]
    p.job_timestamp = datetime.now().strftime("%Y%m%d%H%M%S")
    p._cond_cache = {}
    if p.enable_hr:
        p.hr_upscale_to_x, p.hr_upscale_to_y = p.hr_target_size()
        extra = p.extra_generation_params
        extra["Denoising strength"] = p.denoising_strength
        if p.hr_resize_x == 0 and p.hr_resize_y == 0:
            extra["Hires upscale"] = p.hr_scale
        else:
            extra["Hires resize"] = f"{p.hr_resize_x}x{p.hr_resize_y}"
        if p.hr_second_pass_steps:
            extra["Hires steps"] = p.hr_second_pass_steps
        extra["Hires upscaler"] = p.hr_upscaler
        if p.effective_hr_sampler() != p.sampler_name:
            extra["Hires sampler"] = p.effective_hr_sampler()
        if p.effective_hr_scheduler() != p.scheduler:
            extra["Hires schedule type"] = p.effective_hr_scheduler()
        if p.hr_prompt and p.hr_prompt != p.prompt:
            extra["Hires prompt"] = p.hr_prompt
        if p.hr_negative_prompt and p.hr_negative_prompt != p.negative_prompt:
            extra["Hires negative prompt"] = p.hr_negative_prompt


def _encode(p: StableDiffusionProcessingTxt2Img, encoder: PromptEncoder, prompts: list[str], data: dict,
            tag: str) -> Conditioning:
    """Encode with a per-request cache keyed by the prompts and the active extra networks."""
    key = (tag, tuple(prompts), _network_key(data))
    cached = p._cond_cache.get(key)
    if cached is None:
        cached = p._cond_cache[key] = encoder.encode(prompts, is_negative=tag.endswith("uncond"))
    return cached


def _eta(webui: Any) -> float:
    return float(webui.options.get("eta_ancestral"))


def _ensd(webui: Any) -> int:
    """A1111's `eta_noise_seed_delta` (ENSD)."""
    try:
        return int(webui.options.get("eta_noise_seed_delta") or 0)
    except KeyError:
        return 0


def _sampler_seeds(webui: Any, seeds: list[int]) -> list[int]:
    """Seeds of the samplers' own noise (SDE Brownian trees): the image seeds plus ENSD (mod 2**64)."""
    delta = _ensd(webui)
    return [(seed + delta) % 2**64 for seed in seeds] if delta else list(seeds)


def sampler_generators(webui: Any, generators: list[torch.Generator], seeds: list[int]) -> list[torch.Generator]:
    """The generators of the noise samplers add at each step (ancestral, SDE): the ones continuing the initial
    noise's streams, or with ENSD set, fresh CPU generators seeded `seed + ENSD` (A1111's ENSD)."""
    if not _ensd(webui):
        return generators
    return [torch.Generator("cpu").manual_seed(seed) for seed in _sampler_seeds(webui, seeds)]


def _strip_tags(prompts: list[str]) -> list[str]:
    return [extra_networks.parse_prompt(text)[0] for text in prompts]


def _schedule_label(p: StableDiffusionProcessingTxt2Img, sampler: sampler_table.SamplerInfo) -> str:
    """The `Schedule type` to report: the requested one, or the one used instead (with a comment saying so)."""
    used = _schedulers().effective_schedule_type(sampler, p.scheduler)
    wanted = sampler.automatic_schedule if p.scheduler == "Automatic" else p.scheduler
    if used == wanted:
        return p.scheduler
    extra_networks.add_comment(p, f"Schedule type {p.scheduler} is not available for sampler {sampler.name}; "
                                  f"used {used}")
    return used


def _first_pass(webui: Any, p: StableDiffusionProcessingTxt2Img, model: Any, denoiser: Denoiser,
                encoder: PromptEncoder) -> torch.Tensor:
    """Activate the batch's extra networks, encode its prompts and sample from seeded noise."""
    inputs = first_pass_inputs(webui, p, encoder)
    factor = vae_scale_factor(model)
    if model.is_flux:
        noise, _ = batch_noise(p, (int(model.vae.config.latent_channels), p.height // factor, p.width // factor), factor)
        flux_inputs = flux_sampling.FluxPass(inputs.cond, inputs.uncond, p.cfg_scale, flux_sampling.distilled_cfg(p),
                                             encode=inputs.encode)
        return flux_sampling.txt2img_pass(denoiser, p, model, noise, flux_inputs)
    inputs.image_conditioning = txt2img_conditioning(model, len(p.prompts), p.width, p.height)
    shape = (latent_channels(model), p.height // factor, p.width // factor)
    noise, generators = batch_noise(p, shape, factor)
    generators = sampler_generators(webui, generators, p.seeds)
    scheduler = first_pass_scheduler(webui, p, model)
    scheduler.set_timesteps(p.steps, device=model.device)
    latents = noise.to(model.device) * scheduler.init_noise_sigma
    return denoiser.run(scheduler, scheduler.timesteps, latents, inputs, generators, "Sampling")


def first_pass_inputs(webui: Any, p: StableDiffusionProcessingTxt2Img, encoder: PromptEncoder) -> PassInputs:
    """Parse the current batch's prompts, activate their extra networks (LoRA tags) and encode them: the inputs
    of the first sampling pass of every mode (image conditioning and step hooks left for the mode to set)."""
    prompts, data = extra_networks.parse_prompts(p.prompts)
    if p.disable_extra_networks:  # tags removed from the text, nothing applied (LoRAs still merged are removed)
        data = {}
    p.extra_network_data = data
    webui.extra_networks.activate(p, data)
    if p.scripts is not None:
        p.scripts.process_batch(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
    cond = _encode(p, encoder, prompts, data, "cond")
    negatives = _strip_tags(p.negative_prompts)
    uncond = _encode(p, encoder, negatives, data, "uncond")
    return PassInputs(cond, uncond, p.cfg_scale, p.width, p.height,
                      encode=lambda: (encoder.encode(prompts), encoder.encode(negatives, is_negative=True)))


def first_pass_scheduler(webui: Any, p: StableDiffusionProcessingTxt2Img, model: Any) -> Any:
    """A fresh diffusers scheduler for the request's sampler and schedule type (timesteps not set yet)."""
    sampler = sampler_table.find_sampler(p.sampler_name)
    assert sampler is not None  # validated
    return _schedulers().create_scheduler(sampler, model.scheduler_config, model.prediction_type,
                                        p.scheduler, _sampler_seeds(webui, p.seeds), eta=_eta(webui))


def _hires_pass(webui: Any, p: StableDiffusionProcessingTxt2Img, model: Any, denoiser: Denoiser,
                encoder: PromptEncoder, latents: torch.Tensor) -> torch.Tensor:
    """Activate the hires prompt's extra networks (`p.is_hr_pass` set), upscale, re-noise and sample again."""
    start = p.iteration * p.batch_size
    hr_prompts = p.all_hr_prompts[start:start + p.batch_size]
    hr_negatives = p.all_hr_negative_prompts[start:start + p.batch_size]
    prompts, data = extra_networks.parse_prompts(hr_prompts)
    if p.disable_extra_networks:
        data = {}
    p.hr_extra_network_data = data
    p.is_hr_pass = True
    try:
        webui.extra_networks.activate(p, data)
        cond = _encode(p, encoder, prompts, data, "hr_cond")
        uncond = _encode(p, encoder, _strip_tags(hr_negatives), data, "hr_uncond")
        factor = vae_scale_factor(model)
        target_w, target_h = p.hr_upscale_to_x, p.hr_upscale_to_y
        latents = upscale_latents(model, latents, p.hr_upscaler, target_w, target_h, webui.upscalers)
        if p.hr_resize_x and p.hr_resize_y:  # crop the excess of the aspect-preserving resize
            crop_x = (target_w - p.hr_resize_x) // factor
            crop_y = (target_h - p.hr_resize_y) // factor
            latents = latents[:, :, crop_y // 2:crop_y // 2 + p.hr_resize_y // factor,
                              crop_x // 2:crop_x // 2 + p.hr_resize_x // factor]
        if p.denoising_strength <= 0:
            return latents
        if model.is_flux:
            noise, _ = batch_noise(p, tuple(latents.shape[1:]), factor)  # type: ignore[arg-type]
            inputs = flux_sampling.FluxPass(cond, uncond, p.cfg_scale, flux_sampling.distilled_cfg(p), encode=lambda: (
                encoder.encode(prompts), encoder.encode(_strip_tags(hr_negatives), is_negative=True)))
            return flux_sampling.hires_pass(denoiser, p, model, latents, noise, inputs,
                                            p.hr_second_pass_steps or p.steps)
        shape = tuple(latents.shape[1:])
        noise, generators = batch_noise(p, shape, factor)  # type: ignore[arg-type]
        generators = sampler_generators(webui, generators, p.seeds)
        sampler = sampler_table.find_sampler(p.effective_hr_sampler())
        assert sampler is not None
        scheduler = _schedulers().create_scheduler(sampler, model.scheduler_config, model.prediction_type,
                                                 p.effective_hr_scheduler(), _sampler_seeds(webui, p.seeds),
                                                 eta=_eta(webui))
        steps = p.hr_second_pass_steps or p.steps
        try:
            timesteps = _schedulers().img2img_timesteps(scheduler, steps, p.denoising_strength, model.device)
        except ValueError as exc:  # e.g. LCM: more hires steps than its schedule has at this denoising strength
            raise ProcessingError(f"hires pass with sampler {sampler.name}: {exc}") from exc
        noisy = scheduler.add_noise(latents, noise.to(latents.device), timesteps[:1])
        height, width = latents.shape[2] * factor, latents.shape[3] * factor
        hr_negative_texts = _strip_tags(hr_negatives)
        inputs = PassInputs(cond, uncond, p.cfg_scale, width, height,
                            encode=lambda: (encoder.encode(prompts), encoder.encode(hr_negative_texts, is_negative=True)),
                            image_conditioning=txt2img_conditioning(model, len(hr_prompts), width, height))
        return denoiser.run(scheduler, timesteps, noisy, inputs, generators, "Hires")
    finally:
        p.is_hr_pass = False


def samples_folder(webui: Any, mode: str) -> Path:
    """outputs/{mode}-images/DATE, or the folder of option `outdir_{mode}_samples` when it is set."""
    key = f"outdir_{mode}_samples"
    custom = webui.options.get(key) if key in webui.options.infos else None
    root = Path(custom) if custom else Path(webui.paths.outputs_dir) / f"{mode}-images"
    return images.dated_folder(root)


def process_images(webui: Any, p: StableDiffusionProcessingTxt2Img) -> Processed:
    """Run a txt2img request and return its images, infotexts and info. Raises ProcessingError on bad input.

    Does not take `webui.queue_lock` (the caller does). `override_settings` apply for this call only. Calls
    `webui.state.begin("txt2img", ...)`/`end()` itself. Callbacks: `before_process(p)` once the prompts and seeds
    are set, `process_step(p, step, total)` before every UNet evaluation (`step` counts sampler steps from 0
    within the current pass, `total` = that pass's steps; second-order samplers call it twice per step;
    `p.is_hr_pass` tells the passes apart), `after_process(p, processed)` at the end. The request's always-on
    scripts (`p.scripts`, `modules.scripts.ScriptRun`) get `process` after `before_process`, `before_process_batch`
    and (once the batch's extra networks are active) `process_batch` per batch, `postprocess_image` per image (before
    its infotext and saving) and `postprocess` with the result; a selected script's `run` is the caller's business
    (`modules.api.api.run_with_scripts`).
    """
    p.validate(webui)
    with overridden_options(webui.options, p.override_settings, p.override_settings_restore_afterwards):
        model = webui.models.get()
        if model is None:
            raise ProcessingError("no Stable Diffusion model is loaded")
        if p.tiling is None:
            p.tiling = bool(webui.options.get("tiling"))
        _prepare(p, model)
        _apply_styles(webui, p)
        p.init(webui, model)
        webui.callbacks.run("before_process", p, on_error=lambda message: extra_networks.add_comment(p, message))
        if p.scripts is not None:
            p.scripts.process(p)
        processed = _process(webui, p, model)
        if p.scripts is not None:
            p.scripts.postprocess(p, processed)
    webui.callbacks.run("after_process", p, processed)
    return processed


def _process_flux_checks(p: StableDiffusionProcessingTxt2Img) -> None:
    """Flux packs 2x2 latent cells into one token: every pass's size must be a multiple of 16 pixels."""
    sizes = [(p.width, p.height)] + ([(p.hr_upscale_to_x, p.hr_upscale_to_y)] if p.enable_hr else [])
    if p.enable_hr and p.hr_resize_x and p.hr_resize_y:
        sizes.append((p.hr_resize_x, p.hr_resize_y))
    for width, height in sizes:
        if width % 16 or height % 16:
            raise ProcessingError(f"Flux needs sizes that are multiples of 16 pixels; got {width}x{height}")


def _process(webui: Any, p: StableDiffusionProcessingTxt2Img, model: Any) -> Processed:
    options, state = webui.options, webui.state
    clip_skip = p.clip_skip if p.clip_skip is not None else int(options.get("CLIP_stop_at_last_layers"))
    emphasis = options.get("emphasis")
    if model.is_flux:
        _process_flux_checks(p)
    try:
        encoder = flux_sampling.FluxPromptEncoder(model) if model.is_flux else PromptEncoder(model, clip_skip=clip_skip, emphasis=emphasis if emphasis in EMPHASIS_MODES
                                else "Original", comma_padding_backtrack=int(options.get("comma_padding_backtrack")),
                                embeddings=getattr(webui, "embeddings", None))
    except ValueError as exc:
        raise ProcessingError(str(exc)) from exc
    sampler = sampler_table.find_sampler(p.sampler_name)
    assert sampler is not None
    p.used_schedule = flux_sampling.describe(p, model) if model.is_flux else _schedule_label(p, sampler)
    if not model.is_flux and _schedulers().uses_eta(sampler) and _eta(webui) != 1.0:
        p.extra_generation_params["Eta"] = _eta(webui)
    if _ensd(webui):
        p.extra_generation_params["ENSD"] = _ensd(webui)

    denoiser = flux_sampling.FlowSampler(webui, p, model) if model.is_flux else Denoiser(webui, p, model)
    save = not p.do_not_save_samples and bool(options.get("samples_save"))
    all_images: list[Image.Image] = []
    infotexts: list[str] = []
    saved: list[Path] = []
    log.info("%s: %d image(s) %dx%d, %s (%s), %d steps, CFG %s, seed %d%s, model %s",
             p.mode, p.batch_size * p.n_iter, p.width, p.height, p.sampler_name, p.used_schedule, p.steps, p.cfg_scale,
             p.all_seeds[0], f", hires to {p.hr_upscale_to_x}x{p.hr_upscale_to_y}" if p.enable_hr else "",
             model_name(model))
    state.begin(p.mode, job_count=p.n_iter * (2 if p.enable_hr else 1))
    activated = False
    try:
        with torch.no_grad():
            for iteration in range(p.n_iter):
                if state.interrupted:
                    denoiser.interrupted = True
                    break
                p.iteration = iteration
                start = iteration * p.batch_size
                p.prompts = p.all_prompts[start:start + p.batch_size]
                p.negative_prompts = p.all_negative_prompts[start:start + p.batch_size]
                p.seeds = p.all_seeds[start:start + p.batch_size]
                p.subseeds = p.all_subseeds[start:start + p.batch_size]
                state.job_no = iteration * (2 if p.enable_hr else 1)
                state.textinfo = f"Batch {iteration + 1} of {p.n_iter}"
                if p.scripts is not None:
                    p.scripts.before_process_batch(p, batch_number=iteration, prompts=p.prompts, seeds=p.seeds,
                                                   subseeds=p.subseeds)
                activated = True
                state.skipped = False  # `POST /skip` ends the current batch's sampling; the next one runs
                with circular_padding(model, bool(p.tiling)):
                    latents = p.sample(webui, model, denoiser, encoder)
                    batch_images = decode_latents(model, latents)
                for offset, image in enumerate(batch_images):
                    index = start + offset
                    broken = image_checks.broken_image_comment(index, latents[offset], image, p.extra_network_data)
                    if broken is not None:
                        log.warning("%s", broken)
                        extra_networks.add_comment(p, broken)
                    image = p.postprocess_image(image, offset)
                    if p.scripts is not None:
                        pp = PostprocessImageArgs(image)
                        p.scripts.postprocess_image(p, pp)
                        image = pp.image
                    text = create_infotext(p, webui, index)
                    all_images.append(image)
                    infotexts.append(text)
                    if save:
                        saved.append(images.save_image(image, samples_folder(webui, p.mode), seed=p.all_seeds[index],
                                                       infotext=text,
                                                       pnginfo_enabled=bool(options.get("enable_pnginfo")),
                                                       extension=str(options.get("samples_format")),
                                                       quality=int(options.get("jpeg_quality")),
                                                       lossless=bool(options.get("webp_lossless"))))
                if denoiser.interrupted:
                    break
    finally:
        if activated:
            webui.extra_networks.deactivate(p, p.extra_network_data)
        state.end()

    count = len(all_images)
    vae_file = webui.vae.applied(model) if getattr(webui, "vae", None) is not None else None
    return Processed(
        images=all_images,
        infotexts=infotexts,
        seed=p.all_seeds[0],
        all_seeds=p.all_seeds[:count] if count else p.all_seeds,
        all_prompts=p.all_prompts[:count] if count else p.all_prompts,
        comments=list(p.comments),
        interrupted=denoiser.interrupted,
        saved_paths=saved,
        all_negative_prompts=p.all_negative_prompts[:count] if count else p.all_negative_prompts,
        subseed=p.all_subseeds[0],
        all_subseeds=p.all_subseeds[:count] if count else p.all_subseeds,
        subseed_strength=p.subseed_strength,
        width=p.width,
        height=p.height,
        sampler_name=p.sampler_name,
        scheduler=p.used_schedule,
        cfg_scale=p.cfg_scale,
        steps=p.steps,
        batch_size=p.batch_size,
        sd_model_name=model_name(model),
        sd_model_hash=model.checkpoint.short_hash or None,
        sd_vae_name=vae_file.name if vae_file is not None else None,
        sd_vae_hash=webui.vae.file_hash(vae_file) if vae_file is not None else None,
        seed_resize_from_w=p.seed_resize_from_w,
        seed_resize_from_h=p.seed_resize_from_h,
        denoising_strength=p.extra_generation_params.get("Denoising strength"),
        extra_generation_params=dict(p.extra_generation_params),
        styles=list(p.styles),
        job_timestamp=p.job_timestamp,
        clip_skip=clip_skip,
        is_using_inpainting_conditioning=bool(model.is_inpainting),
    )
