"""The samplers and schedule types under their A1111 names: the one table of names, aliases and defaults.

Pure data and lookups, with no diffusers (or torch) import, so the UI, the API listings, request validation and the
scripts can name samplers without loading diffusers; `modules.sd_samplers` turns an entry into a diffusers scheduler
(`SamplerInfo.scheduler` names its class there).

`SAMPLERS` lists the samplers in UI order; `SCHEDULE_TYPES` the A1111 "Schedule type" values (Automatic, Uniform,
Karras, Exponential, Beta, SGM Uniform) with the diffusers config options each sets. `resolve_sampler("DPM++ 2M
Karras", "Automatic")` splits a legacy combined name into ("DPM++ 2M", "Karras") as A1111 1.9+ does. "Automatic"
means the sampler's A1111 default (`SamplerInfo.automatic_schedule`: Karras for DPM++ 2M/SDE, Exponential for
DPM++ 2M/3M SDE, the plain spacing otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplerInfo:
    """One A1111 sampler: the name of its scheduler class (see `sd_samplers.scheduler_class`), constructor options,
    aliases and default schedule type."""

    name: str
    scheduler: str  # a diffusers scheduler class name, or "EulerAncestralScheduler" (ours, in `sd_samplers`)
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    automatic_schedule: str = "Uniform"  # what "Automatic" means for this sampler (A1111's sampler default)
    brownian: bool = False  # noise from a seeded Brownian tree (DPM++ SDE) rather than from the generators
    max_steps: int | None = None  # LCM: its schedule is a subset of 50 distillation steps


SAMPLERS: tuple[SamplerInfo, ...] = (
    SamplerInfo("DPM++ 2M", "DPMSolverMultistepScheduler",
                {"algorithm_type": "dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m",), "Karras"),
    SamplerInfo("DPM++ SDE", "DPMSolverSDEScheduler", {}, ("k_dpmpp_sde",), "Karras", brownian=True),
    SamplerInfo("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, ("k_dpmpp_2m_sde",), "Exponential"),
    SamplerInfo("DPM++ 3M SDE", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, ("k_dpmpp_3m_sde",), "Exponential"),
    SamplerInfo("Euler a", "EulerAncestralScheduler", {}, ("k_euler_a", "k_euler_ancestral")),
    SamplerInfo("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    SamplerInfo("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    SamplerInfo("Heun", "HeunDiscreteScheduler", {}, ("k_heun",)),
    SamplerInfo("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",)),
    SamplerInfo("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",)),
    SamplerInfo("DDIM", "DDIMScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, ("ddim",)),
    SamplerInfo("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
    # A1111's PLMS: the pseudo linear multistep method without the Runge-Kutta warm-up (diffusers' PNDM with
    # skip_prk_steps), on DDIM's "leading" timestep spacing as A1111's ddim_discretize "uniform".
    SamplerInfo("PLMS", "PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "leading", "steps_offset": 1},
                ("plms",)),
    SamplerInfo("LCM", "LCMScheduler", {"original_inference_steps": 50}, ("k_lcm",), max_steps=50),
)
SAMPLERS_BY_NAME: dict[str, SamplerInfo] = {s.name: s for s in SAMPLERS}
SAMPLERS_BY_ALIAS: dict[str, SamplerInfo] = {
    key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)
}

# Schedule type -> diffusers config options (applied only where the scheduler class supports them).
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Automatic": {},
    "Uniform": {},  # the sampler's own spacing: linspace in sigma-space samplers, "leading" for DDIM
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
}
SCHEDULE_ALIASES: dict[str, str] = {"karras": "Karras", "exponential": "Exponential", "uniform": "Uniform",
                                    "beta": "Beta", "sgm_uniform": "SGM Uniform", "automatic": "Automatic"}


def sampler_names() -> list[str]:
    """Every sampler name, in the order shown in the UI."""
    return [s.name for s in SAMPLERS]


def schedule_type_names() -> list[str]:
    """Every schedule type, "Automatic" first."""
    return list(SCHEDULE_TYPES)


def find_sampler(name: str | None) -> SamplerInfo | None:
    """The sampler for a name or alias (case-insensitive), or None."""
    if not name:
        return None
    return SAMPLERS_BY_NAME.get(name) or SAMPLERS_BY_ALIAS.get(name.lower())


def find_schedule_type(name: str | None) -> str | None:
    """Canonical schedule-type name for a label or alias, or None when unknown (None/"" -> "Automatic")."""
    if not name:
        return "Automatic"
    if name in SCHEDULE_TYPES:
        return name
    return SCHEDULE_ALIASES.get(name.lower().replace(" ", "_"))


def resolve_sampler(sampler_name: str | None, scheduler: str | None) -> tuple[SamplerInfo | None, str | None]:
    """Split A1111's legacy names ("DPM++ 2M Karras") into (sampler, schedule type).

    An empty sampler name means "Euler a". Returns (None, ...) or (..., None) for unknown names.
    """
    name = sampler_name or "Euler a"
    schedule = find_schedule_type(scheduler)
    if find_sampler(name) is None:
        for label in SCHEDULE_TYPES:
            if label != "Automatic" and name.endswith(" " + label):
                name, schedule = name[: -len(label) - 1], label
                break
    return find_sampler(name), schedule

