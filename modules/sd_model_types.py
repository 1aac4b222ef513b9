"""The loaded-model contract shared by model loading, generation, the LoRA engine and the merge tool.

A `LoadedModel` is a plain container of diffusers/transformers modules plus what is needed to name their
layers the way LoRA files do and to write the weights back in the input's format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

FAMILIES = ("SD1", "SD2", "SDXL")  # the UNet families of `modules.checkpoint_convert`
FLUX = "Flux"  # Flux.1 dev/schnell (`modules.flux_model`): a transformer denoiser with flow matching


@dataclass
class CheckpointInfo:
    """A checkpoint on disk: a single `.safetensors`/`.ckpt` file or a diffusers folder."""

    path: Path
    name: str  # file name relative to the checkpoints folder (A1111's "title" without the hash)
    format: str  # "single-file" | "diffusers"
    sha256: str | None = None

    @property
    def short_hash(self) -> str:
        return (self.sha256 or "")[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.sha256 else self.name


@dataclass
class LoadedModel:
    """One Stable Diffusion model in memory.

    * `family`: "SD1", "SD2", "SDXL" or "Flux"; `prediction_type`: "epsilon", "v_prediction" or (Flux) "flow".
    * `unet`: the denoiser: a UNet2DConditionModel, or for Flux the FluxTransformer2DModel (same slot, so the LoRA
      engine, merge tool and pristine weights address it as `unet.`); Flux `text_encoders` = [CLIP-L, T5 encoder].
    * `text_encoders`: SD1/SD2 one `CLIPTextModel`; SDXL `[CLIPTextModel (CLIP-L), CLIPTextModelWithProjection
      (OpenCLIP bigG)]`. `tokenizers` parallel to it.
    * `scheduler_config`: the training noise schedule (num_train_timesteps, beta_start, beta_end,
      beta_schedule, prediction_type) from which every sampler is built.
    * `key_map`: for single-file checkpoints, the checkpoint's original key for every parameter, as
      {"unet.<diffusers param>": "model.diffusion_model.<ldm param>", "text_encoders.0.<param>": ..., "vae.<param>": ...}.
      Parameters that came from a split tensor (OpenCLIP `in_proj_weight` -> q/k/v) are described in `key_map_special`.
      Used by the merge tool to write a single file with the same keys.
    * `ldm_unet_names`: {diffusers module path: LDM/SGM module path} for every UNet module with parameters,
      e.g. "down_blocks.0.attentions.0.proj_in" -> "input_blocks.1.1.proj_in", derived from the UNet config
      (not from fixed SD1.5/SDXL tables). The LoRA key resolver uses it for compvis/SGM-named LoRA keys.
    * `pristine`: a `modules.pristine_weights.PristineWeights` reading parameters back from the memory-mapped
      checkpoint file(s) (`.safetensors` only), or None; the LoRA patcher restores from it instead of copies.
    """

    family: str
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoders: list[Any]
    tokenizers: list[Any]
    prediction_type: str
    scheduler_config: dict[str, Any]
    checkpoint: CheckpointInfo
    device: torch.device
    dtype: torch.dtype
    key_map: dict[str, str] = field(default_factory=dict)
    key_map_special: dict[str, Any] = field(default_factory=dict)
    ldm_unet_names: dict[str, str] = field(default_factory=dict)
    pristine: Any = None

    @property
    def is_sdxl(self) -> bool:
        return self.family == "SDXL"

    @property
    def is_flux(self) -> bool:
        return self.family == FLUX

    @property
    def is_inpainting(self) -> bool:
        return not self.is_flux and int(self.unet.config.in_channels) == 9

    def torch_modules(self) -> dict[str, torch.nn.Module]:
        """Every patchable part by prefix: "unet", "text_encoders.0", "text_encoders.1", "vae"."""
        parts: dict[str, torch.nn.Module] = {"unet": self.unet, "vae": self.vae}
        for index, encoder in enumerate(self.text_encoders):
            parts[f"text_encoders.{index}"] = encoder
        return parts
