"""Full-size random-weight checkpoints for the benchmarks, written tensor by tensor and kept for the next run.

`random_checkpoint(folder, family, dtype)` returns `folder/<family>-<dtype>-seed<N>.safetensors`, an A1111 single-file
checkpoint with the real key layout of the full-size SD1.5 or SDXL model (the configs in `modules/model_configs/`),
writing it first when it is missing. Nothing is built in memory: the key layout comes from the components built on the
meta device, and each tensor is generated on its own, written (`write_safetensors_stream`) and dropped, so writing
SDXL holds one tensor at a time. Values: matrices N(0, 1/fan_in), 1-D weights (norms) 1, biases 0, each tensor from
its own seeded generator (same bytes on every run). `diffusers_folder(...)` turns such a file into a diffusers folder
(`unet/`, `vae/`, `text_encoder/`...) through the WebUI's loader and `save_pretrained`, for the folder variant.

The default folder is `$BENCH_MODELS`, else `bench-models/` next to the repository (outside any git tree).
"""

from __future__ import annotations

import json
import logging
import math
import os
import zlib
from pathlib import Path

import torch

from modules.model_configs import build_components, family_config
from modules.safetensors_header import read_header, write_safetensors_stream
from modules.tiny_models import single_file_state_dict

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_FOLDER = Path(os.environ.get("BENCH_MODELS", ROOT.parent / "bench-models"))
MARKER = "bench.random_weights"


def _random_tensor(key: str, shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """The seeded random value of one tensor (see the module docstring)."""
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    if key.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if len(shape) < 2:
        return torch.ones(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=generator) / math.sqrt(fan_in)).to(dtype)


def random_checkpoint(folder: Path, family: str, dtype: torch.dtype, seed: int = 0) -> Path:
    """The full-size random checkpoint of `family` in `dtype` under `folder`, written now if missing (see the module
    docstring). A file whose metadata does not name these settings is rewritten."""
    name = f"{family.lower()}-{str(dtype).removeprefix('torch.')}-seed{seed}"
    path = Path(folder) / f"{name}.safetensors"
    if path.is_file():
        try:
            if read_header(path).get("__metadata__", {}).get(MARKER) == name:
                return path
        except ValueError:
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    config = family_config(family)
    built = build_components(config, empty=True)
    built["config"] = config
    specs = single_file_state_dict(built, family, dtype=dtype)  # meta tensors (and the few small real extras)
    del built

    def produce(key: str) -> torch.Tensor:
        spec = specs[key]
        if spec.device.type != "meta":
            return spec
        return _random_tensor(key, tuple(spec.shape), spec.dtype, seed)

    architecture = {"SD1": "stable-diffusion-v1", "SD2": "stable-diffusion-v2", "SDXL": "stable-diffusion-xl-v1-base"}
    metadata = {MARKER: name, "modelspec.prediction_type": "epsilon", "modelspec.architecture": architecture[family]}
    total = sum(t.numel() * t.element_size() for t in specs.values())
    log.info("writing %s (%.2f GB) tensor by tensor", path, total / 1e9)
    write_safetensors_stream(path, specs, produce, metadata)
    return path


def diffusers_folder(checkpoint: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> Path:
    """A diffusers folder next to `checkpoint` (`<stem>-diffusers/`) with the same weights, written once."""
    from modules.sd_model_types import CheckpointInfo  # noqa: PLC0415
    from modules.sd_models import load_checkpoint  # noqa: PLC0415

    out = checkpoint.with_name(checkpoint.stem + "-diffusers")
    if (out / "model_index.json").is_file():
        return out
    model = load_checkpoint(CheckpointInfo(path=checkpoint, name=checkpoint.name, format="single-file"), device, dtype)
    tmp = out.with_name(out.name + ".partial")
    parts = {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoders[0]}
    if len(model.text_encoders) > 1:
        parts["text_encoder_2"] = model.text_encoders[1]
    for part, module in parts.items():
        module.save_pretrained(tmp / part, safe_serialization=True)
        del module
    index = {"_class_name": "StableDiffusionXLPipeline" if model.is_sdxl else "StableDiffusionPipeline"}
    (tmp / "model_index.json").write_text(json.dumps(index))
    (tmp / "scheduler").mkdir(exist_ok=True)
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(model.scheduler_config))
    tmp.rename(out)
    return out
