"""Tiny SD1/SD2/SDXL models with deterministic seeded weights, written as real single files or diffusers folders.

The tiny configs (`modules/model_configs/tiny-*.json`) keep each family's block structure (SD1/SD2: 4 UNet levels,
12 input blocks, 1 middle, 12 output blocks; SDXL: 3 levels, 9 input blocks, transformer depth [1, 1, 2], two text
encoders) with small widths, so every name mapping is exercised exactly as for real models. Text encoders keep
CLIP's real vocabulary (49,408 tokens) and 77 positions, so the real tokenizer works with them.

Weights: the libraries' own initialisation under `torch.manual_seed(seed)`, then every tensor plus
0.02 * N(0, 1) noise from a generator seeded with `seed`, so that no two tensors are equal (norm weights are not
all ones, biases not all zeros): a swapped mapping cannot go unnoticed in a test.

Used by the embedded default checkpoint (`modules/embedded_default.py`) and by the tests (`tests/model_factory.py`).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from modules import checkpoint_convert, model_configs
from modules.atomic_io import atomic_path, write_json_atomic
from modules.safetensors_header import write_safetensors
from modules.tokenizer import tokenizers_for

log = logging.getLogger(__name__)

NOISE_SCALE = 0.02
PIPELINE_CLASSES = {"SD1": "StableDiffusionPipeline", "SD2": "StableDiffusionPipeline",
                    "SDXL": "StableDiffusionXLPipeline"}


def tiny_config(family: str, inpainting: bool = False) -> dict[str, Any]:
    """The tiny family config; `inpainting=True` gives the UNet 9 input channels (latent + mask + masked image)."""
    config = model_configs.family_config(family, tiny=True)
    if inpainting:
        config["unet"]["in_channels"] = 9
    return config


@lru_cache(maxsize=12)
def _seeded_weights(family: str, seed: int, inpainting: bool) -> dict[str, dict[str, torch.Tensor]]:
    """The seeded weights of a tiny model, computed once per process (treated as read-only; callers clone)."""
    config = tiny_config(family, inpainting)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        built = model_configs.build_components(config)
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    with torch.no_grad():
        for name, module in components_by_prefix(built).items():
            state = {}
            for key, tensor in sorted(module.state_dict().items()):
                if tensor.is_floating_point():
                    tensor = tensor + torch.randn(tensor.shape, generator=generator).to(tensor.dtype) * NOISE_SCALE
                state[key] = tensor
            weights[name] = state
    return weights


def build_tiny_components(family: str, seed: int = 0, inpainting: bool = False) -> dict[str, Any]:
    """{"unet", "vae", "text_encoders": [...], "tokenizers": [...], "config"} for a tiny `family` model (float32, CPU).

    Same `family`, `seed`, `inpainting` -> bitwise identical weights; every call returns new modules.
    """
    config = tiny_config(family, inpainting)
    weights = _seeded_weights(family, seed, inpainting)
    built = model_configs.build_components(config, empty=True)
    for name, module in components_by_prefix(built).items():
        module.load_state_dict({k: v.clone() for k, v in weights[name].items()}, strict=True, assign=True)
        model_configs.materialize_buffers(module)
        module.eval()
    built["tokenizers"] = tokenizers_for(config)
    built["config"] = config
    return built


def components_by_prefix(built: dict[str, Any]) -> dict[str, torch.nn.Module]:
    """{"unet", "vae", "text_encoders.0", ...} modules of a built model (LoadedModel.torch_modules() naming)."""
    parts = {"unet": built["unet"], "vae": built["vae"]}
    for index, encoder in enumerate(built["text_encoders"]):
        parts[f"text_encoders.{index}"] = encoder
    return parts


def _extra_tensors(family: str, config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Tensors real single files carry beside the weights: schedule buffers, CLIP position_ids, OpenCLIP extras."""
    extra: dict[str, torch.Tensor] = {}
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64).pow(2).float()
    extra["betas"] = betas
    extra["alphas_cumprod"] = torch.cumprod(1.0 - betas, dim=0)
    generator = torch.Generator().manual_seed(seed + 1)
    for index, (kind, prefix) in enumerate(checkpoint_convert.TEXT_PREFIXES[family]):
        text = config["text_encoders"][index]["config"]
        if kind == "clip":
            extra[prefix + "embeddings.position_ids"] = torch.arange(text["max_position_embeddings"]).unsqueeze(0)
        else:
            extra[prefix + "logit_scale"] = torch.tensor(4.6052)
            if config["text_encoders"][index]["class"] == "CLIPTextModel":  # SD2: projection unused by the UNet
                extra[prefix + "text_projection"] = torch.randn(
                    text["hidden_size"], text["projection_dim"], generator=generator) * 0.05
    return extra


def single_file_state_dict(built: dict[str, Any], family: str, seed: int = 0,
                           dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The LDM/SGM single-file state dict of built components (real key layout), optionally cast to `dtype`.

    Tensors mapped one to one share storage with the modules' parameters (clone before mutating either).
    """
    return _ldm_state(built["config"], {n: m.state_dict() for n, m in components_by_prefix(built).items()},
                      family, seed, dtype)


def _ldm_state(config: dict[str, Any], states: dict[str, dict[str, torch.Tensor]], family: str, seed: int,
               dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    shapes = {name: {k: tuple(v.shape) for k, v in state.items()} for name, state in states.items()}
    key_map, transforms = checkpoint_convert.build_key_map(family, config, shapes)
    state = checkpoint_convert.diffusers_to_ldm(states, key_map, {"transforms": transforms})
    state.update(_extra_tensors(family, config, seed))
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return state


def write_single_file(path: str | Path, family: str, seed: int = 0, inpainting: bool = False,
                      v_prediction: bool = False, dtype: torch.dtype | None = None) -> Path:
    """Write a tiny A1111/LDM single-file `.safetensors` (or `.ckpt` by suffix) atomically and return its path. The
    same arguments give the same bytes on every machine and run (`.safetensors`).

    The file's metadata says `modelspec.prediction_type` = "v" or "epsilon" (the SAI model-spec key the loader
    reads), so the prediction type of a tiny SD2 model is known without A1111's test forward pass.
    """
    path = Path(path)
    weights = _seeded_weights(family, seed, inpainting)  # no modules needed: straight from the cached weights
    state = _ldm_state(tiny_config(family, inpainting), weights, family, seed, dtype)
    if path.suffix.lower() == ".ckpt":
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state}, tmp)
    else:
        metadata = {"format": "pt", "modelspec.prediction_type": "v" if v_prediction else "epsilon",
                    "modelspec.architecture": {"SD1": "stable-diffusion-v1", "SD2": "stable-diffusion-v2",
                                               "SDXL": "stable-diffusion-xl-v1-base"}[family]}
        write_safetensors(path, state, metadata)
    log.debug("wrote tiny %s checkpoint %s", family, path)
    return path


def write_diffusers_folder(path: str | Path, family: str, seed: int = 0, inpainting: bool = False,
                           v_prediction: bool = False, with_tokenizers: bool = True) -> Path:
    """Write the same tiny weights as a diffusers folder (`unet/`, `vae/`, `text_encoder[_2]/`, `tokenizer[_2]/`,
    `scheduler/scheduler_config.json`, `model_index.json`) with `save_pretrained(..., safe_serialization=True)`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    built = build_tiny_components(family, seed=seed, inpainting=inpainting)
    built["unet"].save_pretrained(path / "unet", safe_serialization=True)
    built["vae"].save_pretrained(path / "vae", safe_serialization=True)
    index: dict[str, Any] = {"_class_name": PIPELINE_CLASSES[family], "_diffusers_version": _diffusers_version(),
                             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    for i, encoder in enumerate(built["text_encoders"]):
        suffix = "" if i == 0 else f"_{i + 1}"
        encoder.save_pretrained(path / f"text_encoder{suffix}", safe_serialization=True)
        index[f"text_encoder{suffix}"] = ["transformers", type(encoder).__name__]
        if with_tokenizers:
            built["tokenizers"][i].save_pretrained(path / f"tokenizer{suffix}")
            index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    if family != "SDXL":
        index.update({"safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False})
    else:
        index["force_zeros_for_empty_prompt"] = True
    prediction = "v_prediction" if v_prediction else "epsilon"
    schedule = checkpoint_convert.scheduler_config(family, prediction)
    write_json_atomic(path / "scheduler" / "scheduler_config.json", {"_class_name": "EulerDiscreteScheduler", **schedule})
    write_json_atomic(path / "model_index.json", index)
    log.info("wrote tiny %s diffusers folder %s", family, path)
    return path


def _diffusers_version() -> str:
    import diffusers  # noqa: PLC0415

    return diffusers.__version__

