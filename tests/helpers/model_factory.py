"""Tiny test models: the builders of `modules.tiny_models`, re-exported for tests.

* `build_tiny_components(family, seed=0, inpainting=False)` -> {"unet", "vae", "text_encoders", "tokenizers", "config"}
* `write_single_file(path, family, seed=0, inpainting=False, v_prediction=False, dtype=None)` -> Path
  (A1111/LDM single-file `.safetensors`, or `.ckpt` by suffix, with the real key layout)
* `write_diffusers_folder(path, family, seed=0, inpainting=False, v_prediction=False)` -> Path
* `components_by_prefix(built)` -> {"unet", "vae", "text_encoders.0", ...}
* `tiny_vae_states(family, seed)` -> (an A1111 VAE file's tensors, the diffusers VAE state they give)
* `write_vae_file(path, family="SD1", seed=0)` -> the diffusers VAE state the file must load as

Families: "SD1", "SD2", "SDXL". Same arguments -> bitwise identical weights.
"""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from modules.tiny_models import (
    build_tiny_components,
    components_by_prefix,
    single_file_state_dict,
    tiny_config,
    write_diffusers_folder,
    write_single_file,
)

FAMILIES = ("SD1", "SD2", "SDXL")


def tiny_vae_states(family: str = "SD1", seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(the tensors of an A1111 VAE file: LDM names without `first_stage_model.`, the diffusers AutoencoderKL state
    they must load as) for the tiny `family` weights of `seed`."""
    built = build_tiny_components(family, seed=seed)
    full = single_file_state_dict(built, family, seed=seed)
    ldm = {k.removeprefix("first_stage_model."): v.clone() for k, v in full.items() if k.startswith("first_stage_model.")}
    return ldm, {k: v.clone() for k, v in built["vae"].state_dict().items()}


def write_vae_file(path, family: str = "SD1", seed: int = 0) -> dict[str, torch.Tensor]:
    """Write an A1111-layout VAE `.safetensors`; returns the diffusers VAE state it must load as."""
    ldm, expected = tiny_vae_states(family, seed)
    save_file(ldm, str(path))
    return expected

__all__ = [
    "FAMILIES",
    "build_tiny_components",
    "components_by_prefix",
    "single_file_state_dict",
    "tiny_config",
    "tiny_vae_states",
    "write_vae_file",
    "write_diffusers_folder",
    "write_single_file",
]
