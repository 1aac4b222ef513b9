"""Tiny test models: the builders of `modules.tiny_models`, re-exported for tests.

* `build_tiny_components(family, seed=0, inpainting=False)` -> {"unet", "vae", "text_encoders", "tokenizers", "config"}
* `write_single_file(path, family, seed=0, inpainting=False, v_prediction=False, dtype=None)` -> Path
  (A1111/LDM single-file `.safetensors`, or `.ckpt` by suffix, with the real key layout)
* `write_diffusers_folder(path, family, seed=0, inpainting=False, v_prediction=False)` -> Path
* `components_by_prefix(built)` -> {"unet", "vae", "text_encoders.0", ...}

Families: "SD1", "SD2", "SDXL". Same arguments -> bitwise identical weights.
"""

from __future__ import annotations

from modules.tiny_models import (
    build_tiny_components,
    components_by_prefix,
    single_file_state_dict,
    tiny_config,
    write_diffusers_folder,
    write_single_file,
)

FAMILIES = ("SD1", "SD2", "SDXL")

__all__ = [
    "FAMILIES",
    "build_tiny_components",
    "components_by_prefix",
    "single_file_state_dict",
    "tiny_config",
    "write_diffusers_folder",
    "write_single_file",
]
