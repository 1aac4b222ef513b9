"""Flux.1 generation: prompt encoding (CLIP-L pooled + T5 sequence), flow-matching Euler with the shift schedule,
distilled guidance, and the txt2img / hires passes `modules.processing` hands Flux models to.

Flow matching: x_sigma = (1 - sigma) x0 + sigma * noise, the model predicts v = noise - x0, and Euler steps
x <- x + (sigma_next - sigma) v over sigmas from 1 to 0. Schedule (diffusers' FlowMatchEulerDiscreteScheduler with
FluxPipeline's sigmas): s_i = linspace(1, 1/n, n), then
* dev (`use_dynamic_shifting`): mu = linear in the packed image length L between (base_image_seq_len, base_shift)
  and (max_image_seq_len, max_shift), sigma = e^mu / (e^mu + 1/s - 1);
* schnell: sigma = shift s / (1 + (shift - 1) s) (shift 1: unchanged),
and a final 0.

Latents: the VAE's (B, 16, H/8, W/8), packed as 2x2 patches into (B, H/16 * W/16, 64) tokens with position ids
(0, row, column); text ids are zeros. Guidance: dev's distilled guidance is an input of the model
(`distilled_cfg_scale`, Forge's "Distilled CFG Scale", default 3.5); `cfg_scale` other than 1 adds real
classifier-free guidance with the negative prompt (two model calls per step, as Forge does). Prompt emphasis
`(word:1.2)` is not applied to Flux's encoders (Forge does not either); LoRA tags are removed before encoding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from modules import extra_networks, flux_model

DEFAULT_DISTILLED_CFG = 3.5
SAMPLER = "Euler"
SCHEDULE = "Simple"


@dataclass
class FluxConditioning:
    """Encoded prompts: T5's sequence `hidden` (B, L, D_t5) and CLIP-L's pooled output `pooled` (B, D_clip)."""

    hidden: torch.Tensor
    pooled: torch.Tensor


class FluxPromptEncoder:
    """`encode(prompts)` -> FluxConditioning, the interface `processing` uses for every model family."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def token_count(self, prompt: str) -> int:
        """T5 tokens of `prompt` (the length that matters for Flux)."""
        return len(self.model.tokenizers[1](prompt).input_ids)

    @torch.no_grad()
    def encode(self, prompts: list[str], is_negative: bool = False) -> FluxConditioning:
        """CLIP-L pooled output (77 tokens) and T5's last hidden state (`t5_max_length` tokens, padded)."""
        clip, t5 = self.model.text_encoders
        clip_tok, t5_tok = self.model.tokenizers
        device = self.model.device
        clip_ids = clip_tok(prompts, padding="max_length", max_length=77, truncation=True,
                            return_tensors="pt").input_ids.to(device)
        pooled = clip(clip_ids, output_hidden_states=False).pooler_output
        t5_ids = t5_tok(prompts, padding="max_length", max_length=int(t5_tok.model_max_length), truncation=True,
                        return_tensors="pt").input_ids.to(device)
        hidden = t5(t5_ids, output_hidden_states=False).last_hidden_state
        return FluxConditioning(hidden=hidden, pooled=pooled)


# ---- schedule ----------------------------------------------------------------------------------------------------


def flow_shift_mu(image_seq_len: int, config: dict[str, Any]) -> float:
    """FluxPipeline's `calculate_shift`: mu linear in the packed latent length."""
    base_len, max_len = int(config["base_image_seq_len"]), int(config["max_image_seq_len"])
    base, top = float(config["base_shift"]), float(config["max_shift"])
    slope = (top - base) / (max_len - base_len)
    return image_seq_len * slope + (base - slope * base_len)


def flow_sigmas(steps: int, image_seq_len: int, config: dict[str, Any]) -> torch.Tensor:
    """The `steps + 1` sigmas (1 -> 0, float32) of the module docstring's schedule."""
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    if config.get("use_dynamic_shifting"):
        mu = flow_shift_mu(image_seq_len, config)
        sigmas = math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0))
    else:
        shift = float(config.get("shift", 1.0))
        sigmas = shift * s / (1.0 + (shift - 1.0) * s)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float()


# ---- latents -----------------------------------------------------------------------------------------------------


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 * W/2, 4C): 2x2 patches as tokens (FluxPipeline's layout)."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `pack_latents` for latents `height` x `width` cells."""
    b, _, d = tokens.shape
    x = tokens.view(b, height // 2, width // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, height, width)


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(H/2 * W/2, 3) position ids (0, row, column) of the packed tokens."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 1] += torch.arange(height // 2)[:, None]
    ids[..., 2] += torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


# ---- the loop ----------------------------------------------------------------------------------------------------


@dataclass
class FluxPass:
    """What one sampling pass needs besides the latents (`encode` re-encodes when LoRA text-encoder weights change
    mid-pass)."""

    cond: FluxConditioning
    uncond: FluxConditioning
    cfg_scale: float
    guidance: float
    encode: Callable[[], tuple[FluxConditioning, FluxConditioning]] | None = None


class FlowSampler:
    """Flow-matching Euler over the Flux transformer, with the host's progress, callbacks and interruption."""

    def __init__(self, webui: Any, p: Any, model: Any) -> None:
        self.webui, self.p, self.model = webui, p, model
        self.interrupted = False

    def velocity(self, tokens: torch.Tensor, sigma: torch.Tensor, inputs: FluxPass, ids: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
        """The model's v (float32) at `sigma`, with real CFG when `cfg_scale` != 1; the transformer runs in `dtype`,
        its parameters' dtype (`run` reads it once: diffusers' `ModelMixin.dtype` walks every submodule)."""
        transformer = self.model.unet
        device = self.model.device
        batch = tokens.shape[0]
        guidance = (torch.full((batch,), float(inputs.guidance), device=device, dtype=torch.float32)
                    if transformer.config.guidance_embeds else None)

        def run(cond: FluxConditioning) -> torch.Tensor:
            text_ids = torch.zeros(cond.hidden.shape[1], 3, device=device, dtype=dtype)
            return transformer(hidden_states=tokens.to(dtype), timestep=sigma.expand(batch).to(dtype),
                               guidance=guidance, pooled_projections=cond.pooled.to(device=device, dtype=dtype),
                               encoder_hidden_states=cond.hidden.to(device=device, dtype=dtype), txt_ids=text_ids,
                               img_ids=ids, return_dict=False)[0].float()

        v = run(inputs.cond)
        if inputs.cfg_scale != 1.0:
            v_uncond = run(inputs.uncond)
            v = v_uncond + inputs.cfg_scale * (v - v_uncond)
        return v

    @torch.no_grad()
    def run(self, x: torch.Tensor, sigmas: torch.Tensor, inputs: FluxPass, desc: str) -> torch.Tensor:
        """Euler from unpacked latents `x` (B, 16, h, w) at `sigmas[0]` down to `sigmas[-1]`; returns (B, 16, h, w)
        (the last x0 estimate when interrupted, as A1111 does)."""
        state = self.webui.state
        height, width = x.shape[2], x.shape[3]
        tokens = pack_latents(x.float())
        dtype = self.model.unet.dtype
        ids = image_ids(height, width, self.model.device, dtype)
        sigmas = sigmas.to(self.model.device)
        total = len(sigmas) - 1
        state.sampling_steps, state.sampling_step = total, 0
        estimate = tokens
        with tqdm(total=total, desc=desc, unit="it", leave=False) as bar:
            for step in range(total):
                if state.interrupted:
                    self.interrupted = True
                    tokens = estimate
                    break
                self.webui.callbacks.run("process_step", self.p, step, total,
                                         on_error=lambda message: extra_networks.add_comment(self.p, message))
                if self.p.generation_state.conditioning_stale and inputs.encode is not None:
                    inputs.cond, inputs.uncond = inputs.encode()
                    self.p.generation_state.conditioning_stale = False
                sigma, following = sigmas[step], sigmas[step + 1]
                v = self.velocity(tokens, sigma, inputs, ids, dtype)
                estimate = tokens - sigma * v  # x0 = x - sigma v
                tokens = tokens + (following - sigma) * v
                state.sampling_step = step + 1
                bar.update(1)
        return unpack_latents(tokens, height, width)


# ---- processing's hooks ------------------------------------------------------------------------------------------


def describe(p: Any, model: Any) -> str:
    """Set the infotext fields of a Flux generation; returns the schedule type to report. A sampler other than Euler
    is replaced by Euler, with a comment saying so."""
    if p.sampler_name != SAMPLER:
        extra_networks.add_comment(p, f"Sampler {p.sampler_name} is not available for Flux; used {SAMPLER}")
        p.sampler_name = SAMPLER
    if model.unet.config.guidance_embeds:
        p.extra_generation_params["Distilled CFG Scale"] = distilled_cfg(p)
    p.extra_generation_params["Model family"] = model.family
    for index, file in enumerate(flux_model.module_files(model), start=1):  # Forge's names for the companion files
        p.extra_generation_params[f"Module {index}"] = file.stem
    return SCHEDULE


def distilled_cfg(p: Any) -> float:
    """The request's `distilled_cfg_scale`, or Forge's default 3.5."""
    value = getattr(p, "distilled_cfg_scale", None)
    return DEFAULT_DISTILLED_CFG if value is None else float(value)


def txt2img_pass(sampler: FlowSampler, p: Any, model: Any, noise: torch.Tensor, inputs: FluxPass) -> torch.Tensor:
    """The first pass: seeded noise (B, 16, h, w) at sigma 1, `p.steps` Euler steps."""
    sigmas = flow_sigmas(p.steps, (noise.shape[2] // 2) * (noise.shape[3] // 2), model.scheduler_config)
    return sampler.run(noise.to(model.device), sigmas, inputs, "Sampling")


def hires_pass(sampler: FlowSampler, p: Any, model: Any, latents: torch.Tensor, noise: torch.Tensor,
               inputs: FluxPass, steps: int) -> torch.Tensor:
    """The hires pass: the upscaled latents re-noised to the schedule's sigma at `denoising_strength` (the last
    ceil(steps * strength) steps of a `steps`-step schedule) and sampled from there."""
    sigmas = flow_sigmas(steps, (latents.shape[2] // 2) * (latents.shape[3] // 2), model.scheduler_config)
    run = max(1, min(steps, math.ceil(steps * float(p.denoising_strength))))
    sigmas = sigmas[steps - run:]
    start = sigmas[0].item()
    noisy = (1.0 - start) * latents.float() + start * noise.to(latents.device).float()
    return sampler.run(noisy, sigmas, inputs, "Hires")
