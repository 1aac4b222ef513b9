"""Samplers as diffusers schedulers on the model's training noise schedule (the names live in `modules.sampler_table`).

`create_scheduler(info, ...)` builds a fresh scheduler per pass for a `sampler_table.SamplerInfo`, following the
schedule type; a schedule a diffusers class cannot follow (only DDIM and LCM have such gaps) falls back to the
sampler's default. `step_kwargs` gives the per-image seeded CPU generators to samplers that draw noise (ancestral,
SDE); `attach_cpu_noise` does the same for DPM++ SDE's Brownian tree. Euler a is diffusers' Euler ancestral extended
with the Karras/exponential/beta schedules and A1111's `eta_ancestral` (`EulerAncestralScheduler`).
"""

from __future__ import annotations

import inspect
import logging
import math
import warnings
from typing import Any

import numpy as np
import scipy.stats
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from modules.sampler_table import SCHEDULE_TYPES, SamplerInfo

log = logging.getLogger(__name__)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) schedule: `n` sigmas from `sigma_max` down to `sigma_min`, uniform in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def exponential_sigmas(sigma_min: float, sigma_max: float, n: int) -> np.ndarray:
    """`n` sigmas from `sigma_max` down to `sigma_min`, uniform in log sigma."""
    return np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n))


def beta_sigmas(sigma_min: float, sigma_max: float, n: int, alpha: float = 0.6, beta: float = 0.6) -> np.ndarray:
    """"Beta sampling" schedule: sigmas at the Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n)."""
    quantiles = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta)
    return sigma_min + quantiles * (sigma_max - sigma_min)


SIGMA_SCHEDULES = {"Karras": karras_sigmas, "Exponential": exponential_sigmas, "Beta": beta_sigmas}


class EulerAncestralScheduler(EulerAncestralDiscreteScheduler):
    """diffusers' Euler ancestral step on any of `SIGMA_SCHEDULES` (the base class only spaces timesteps).

    `sigma_schedule` is set per instance by `create_scheduler`; the sigmas are mapped back to (fractional)
    timesteps by interpolating in log-sigma over the training schedule, as the other diffusers schedulers do.
    """

    sigma_schedule: str = "Uniform"
    eta: float = 1.0  # A1111's "Eta for ancestral samplers": the share of the step's noise that is fresh noise

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        super().set_timesteps(num_inference_steps, device=device)
        make = SIGMA_SCHEDULES.get(self.sigma_schedule)
        if make is None:
            return
        base = self.sigmas[:-1].cpu().double().numpy()
        sigmas = make(float(base[-1]), float(base[0]), num_inference_steps)
        training = (((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5).double().numpy()
        timesteps = np.interp(np.log(sigmas), np.log(training), np.arange(len(training)))
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)).to(device=device)
        self.timesteps = torch.from_numpy(timesteps.astype(np.float32)).to(device=device)

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: Any = None, return_dict: bool = True) -> Any:
        """diffusers' step when eta is 1; otherwise k-diffusion's ancestral step with
        sigma_up = min(sigma_next, eta * sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2))."""
        if self.eta == 1.0:
            return super().step(model_output, timestep, sample, generator=generator, return_dict=return_dict)
        if self.step_index is None:
            self._init_step_index(timestep)
        sigma, sigma_next = self.sigmas[self.step_index], self.sigmas[self.step_index + 1]
        x = sample.to(torch.float32)
        if self.config.prediction_type == "v_prediction":
            denoised = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
        else:
            denoised = x - sigma * model_output
        sigma_up = torch.minimum(sigma_next, self.eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device,
                             generator=generator)  # drawn even when unused, so the seed streams stay aligned
        prev = (x + noise * sigma_up).to(model_output.dtype)
        self._step_index += 1
        if not return_dict:
            return prev, denoised
        return EulerAncestralDiscreteSchedulerOutput(prev_sample=prev, pred_original_sample=denoised)


# `SamplerInfo.scheduler` -> class.
SCHEDULER_CLASSES: dict[str, type] = {cls.__name__: cls for cls in (
    DDIMScheduler, DPMSolverMultistepScheduler, DPMSolverSDEScheduler, EulerAncestralScheduler, EulerDiscreteScheduler,
    HeunDiscreteScheduler, KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, LCMScheduler, LMSDiscreteScheduler,
    PNDMScheduler, UniPCMultistepScheduler)}

# Keys of the model's scheduler config that describe the training schedule; everything else is ours to choose.
TRAINING_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                 "prediction_type", "rescale_betas_zero_snr", "set_alpha_to_one", "clip_sample",
                 "timestep_type", "interpolation_type", "sample_max_value", "thresholding")


def scheduler_class(info: SamplerInfo) -> type:
    """The scheduler class that `info.scheduler` names."""
    return SCHEDULER_CLASSES[info.scheduler]


def _init_parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters)


def supported_schedule_types(info: SamplerInfo) -> list[str]:
    """Schedule types the sampler's diffusers class can follow."""
    cls = scheduler_class(info)
    params = _init_parameters(cls)
    own_sigmas = issubclass(cls, EulerAncestralScheduler)
    return [name for name, opts in SCHEDULE_TYPES.items() if set(opts) <= params or (own_sigmas and name in
                                                                                      SIGMA_SCHEDULES)]


def effective_schedule_type(info: SamplerInfo, schedule: str) -> str:
    """The schedule actually used: "Automatic" becomes the sampler's default; unsupported ones fall back to it."""
    supported = supported_schedule_types(info)
    wanted = info.automatic_schedule if schedule == "Automatic" else schedule
    if wanted not in supported:
        wanted = info.automatic_schedule if info.automatic_schedule in supported else "Uniform"
    return wanted


def create_scheduler(info: SamplerInfo, scheduler_config: dict[str, Any], prediction_type: str,
                     schedule: str = "Automatic", seeds: list[int] | None = None, eta: float = 1.0) -> Any:
    """A fresh diffusers scheduler for `info` on the model's training schedule, following `schedule`.

    `seeds` (one per image) seed the Brownian tree of DPM++ SDE, so its noise depends on the seeds only.
    `eta` applies to Euler a (see `uses_eta`).
    """
    cls = scheduler_class(info)
    params = _init_parameters(cls)
    config = {k: v for k, v in scheduler_config.items() if k in TRAINING_KEYS and k in params}
    config["prediction_type"] = prediction_type
    # SD's training config has steps_offset=1. Only "leading" spacing (DDIM's option below) reads it; for the other
    # spacings it changes nothing, and without it diffusers' own pipelines warn that the config is outdated.
    config["steps_offset"] = 1
    config.update({"timestep_spacing": "linspace"} if "timestep_spacing" in params else {})
    config.update(info.options)
    used = effective_schedule_type(info, schedule)
    config.update(SCHEDULE_TYPES[used])
    if info.brownian and seeds is not None:
        config["noise_sampler_seed"] = list(seeds)  # always a list: one tree per image, batch or not
    config = {k: v for k, v in config.items() if k in params}
    scheduler = cls(**config)
    if isinstance(scheduler, EulerAncestralScheduler):
        scheduler.sigma_schedule = used
        scheduler.eta = float(eta)
    return scheduler


def uses_eta(info: SamplerInfo) -> bool:
    """Whether the sampler follows the `eta_ancestral` option."""
    return issubclass(scheduler_class(info), EulerAncestralScheduler)


def step_kwargs(scheduler: Any, generators: list[torch.Generator]) -> dict[str, Any]:
    """Keyword arguments for `scheduler.step`: the per-image CPU generators when the step draws noise."""
    if "generator" in inspect.signature(scheduler.step).parameters:
        return {"generator": generators if len(generators) > 1 else generators[0]}
    return {}


def img2img_timesteps(scheduler: Any, steps: int, denoising_strength: float, device: torch.device,
                      total: int | None = None) -> torch.Tensor:
    """Set up `scheduler` for a pass that starts from a noised image and runs exactly `steps` steps.

    As A1111 does for hires fix: the schedule is built for `steps / denoising_strength` steps and only its
    last `steps` are run. With `total` (img2img: the requested steps) the schedule has `total` steps and its last
    `steps` run (A1111 img2img: `int(denoising_strength * steps)` of them). Returns the timesteps to run (for
    second-order samplers, two per step but the last).
    """
    strength = min(max(denoising_strength, 1e-3), 0.999)
    if isinstance(scheduler, LCMScheduler):  # LCM picks its steps inside the first `strength` of its schedule
        scheduler.set_timesteps(total or steps, device=device, strength=strength)
        return scheduler.timesteps
    total = max(total or int(steps / strength), steps)
    scheduler.set_timesteps(total, device=device)
    start = (total - steps) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler.timesteps[start:]


class CpuBrownianNoise:
    """DPM++ SDE's Brownian-tree noise drawn on the CPU in float32 (one tree per image seed), then moved to the
    sample's device, so the noise depends on the seeds only and not on the device."""

    def __init__(self, sample: torch.Tensor, sigma_min: float, sigma_max: float, seeds: list[int]):
        template = torch.zeros(sample.shape, dtype=torch.float32)
        self.inner = BrownianTreeNoiseSampler(template, sigma_min, sigma_max, list(seeds))
        self.device, self.dtype = sample.device, sample.dtype

    def __call__(self, sigma: Any, sigma_next: Any) -> torch.Tensor:
        with warnings.catch_warnings():  # the midpoint sigma can undershoot the tree's range by float rounding
            warnings.filterwarnings("ignore", message="Should have t", category=UserWarning)
            noise = self.inner(float(sigma), float(sigma_next))
        return noise.to(device=self.device, dtype=self.dtype)


def attach_cpu_noise(scheduler: Any, sample: torch.Tensor, seeds: list[int]) -> None:
    """Give a Brownian-tree scheduler (DPM++ SDE) seeded CPU noise; call after `set_timesteps`. No-op otherwise."""
    if isinstance(scheduler, DPMSolverSDEScheduler):
        sigmas = scheduler.sigmas
        scheduler.noise_sampler = CpuBrownianNoise(sample, float(sigmas[sigmas > 0].min()), float(sigmas.max()),
                                                   seeds)
