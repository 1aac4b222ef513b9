"""Test helpers for the Lora engine: tiny loaded models and hand-written LoRA files with known deltas.

`write_kohya_lora` writes a real kohya-format LoRA (`lora_unet_*`, `lora_te*_*`, `.lora_up/.lora_down/.alpha`) for
the Linear (and optionally 3x3 conv) layers of a model and returns the exact delta each layer must receive at
multiplier 1: delta = (alpha / rank) * up @ down (conv: reshaped to the kernel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lorakit.formats.keys import kohya_key
from modules.checkpoint_convert import scheduler_config, unet_ldm_module_map_for
from modules.sd_model_types import CheckpointInfo, LoadedModel
from tests.helpers.model_factory import build_tiny_components


def tiny_loaded_model(family: str = "SD1", seed: int = 0, inpainting: bool = False) -> LoadedModel:
    """A LoadedModel built in memory from the tiny configs (float32, CPU)."""
    built = build_tiny_components(family, seed=seed, inpainting=inpainting)
    return LoadedModel(
        family=family, unet=built["unet"], vae=built["vae"], text_encoders=built["text_encoders"],
        tokenizers=built["tokenizers"], prediction_type="epsilon",
        scheduler_config=scheduler_config(family, "epsilon"),
        checkpoint=CheckpointInfo(path=Path(f"tiny-{family}.safetensors"), name=f"tiny-{family}", format="single-file"),
        device=torch.device("cpu"), dtype=torch.float32, ldm_unet_names=unet_ldm_module_map_for(built["unet"]),
    )


def state_snapshot(model: LoadedModel) -> dict[str, torch.Tensor]:
    """A copy of every parameter of the UNet and text encoders, keyed by LoadedModel part + name."""
    snap = {}
    for prefix, module in model.torch_modules().items():
        for name, tensor in module.state_dict().items():
            snap[f"{prefix}.{name}"] = tensor.detach().clone()
    return snap


def assert_bitwise_equal(model: LoadedModel, snapshot: dict[str, torch.Tensor]) -> None:
    current = state_snapshot(model)
    assert current.keys() == snapshot.keys(), set(current) ^ set(snapshot)
    for key, tensor in snapshot.items():
        assert torch.equal(current[key], tensor), f"{key} differs from pristine"


def kohya_name(model: LoadedModel, target_name: str, sgm: bool = False) -> str:
    """The kohya key of a target layer ("unet.x.y" / "text_encoders.0.a.b"); `sgm` spells UNet layers with their
    LDM/SGM names as kohya's SDXL trainer does."""
    if sgm and target_name.startswith("unet."):
        return "lora_unet_" + model.ldm_unet_names[target_name[len("unet."):]].replace(".", "_")
    return kohya_key(target_name, len(model.text_encoders))


def lora_targets(model: LoadedModel, conv: bool = False, text_encoder: bool = True) -> dict[str, torch.nn.Module]:
    """Target layers a LoRA commonly trains: UNet attention/FF Linear layers (+ 3x3 convs), TE Linear layers."""
    found: dict[str, torch.nn.Module] = {}
    for name, module in model.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and ("attentions" in name or "proj" in name):
            found[f"unet.{name}"] = module
        elif conv and isinstance(module, torch.nn.Conv2d) and module.kernel_size == (3, 3) and "resnets" in name:
            found[f"unet.{name}"] = module
    if text_encoder:
        for index, encoder in enumerate(model.text_encoders):
            for name, module in encoder.named_modules():
                if isinstance(module, torch.nn.Linear) and "layers" in name:
                    found[f"text_encoders.{index}.{name}"] = module
    return found


def write_kohya_lora(path: Path, model: LoadedModel, rank: int = 4, alpha: float = 2.0, seed: int = 0,
                     conv: bool = False, text_encoder: bool = True, sgm: bool = False,
                     metadata: dict[str, str] | None = None, only: int | None = None) -> dict[str, torch.Tensor]:
    """Write a kohya LoRA for the model's usual targets; return {target name: delta at multiplier 1}."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    deltas: dict[str, torch.Tensor] = {}
    targets = list(lora_targets(model, conv=conv, text_encoder=text_encoder).items())
    for name, module in targets[:only] if only else targets:
        key = kohya_name(model, name, sgm=sgm)
        weight = module.weight
        if weight.dim() == 4:
            out_ch, in_ch, kh, kw = weight.shape
            down = torch.randn(rank, in_ch, kh, kw, generator=generator) * 0.1
            up = torch.randn(out_ch, rank, 1, 1, generator=generator) * 0.1
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * (alpha / rank)
        else:
            down = torch.randn(rank, weight.shape[1], generator=generator) * 0.1
            up = torch.randn(weight.shape[0], rank, generator=generator) * 0.1
            delta = up @ down * (alpha / rank)
        tensors[f"{key}.lora_down.weight"] = down
        tensors[f"{key}.lora_up.weight"] = up
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
        deltas[name] = delta
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata or {})
    return deltas


def load_checkpoint_file(path: Path, fmt: str = "single-file", dtype: torch.dtype = torch.float32,
                         models_dir: Path | None = None) -> LoadedModel:
    """The checkpoint at `path` (a single file or a diffusers folder) loaded on the CPU by the host's loader
    (`models_dir`: where a Flux transformer file's text encoders and VAE are)."""
    from modules.sd_models import load_checkpoint  # noqa: PLC0415 - the host's loader, only for tests that load files

    return load_checkpoint(CheckpointInfo(path=path, name=path.name, format=fmt), "cpu", dtype, models_dir)


def engine_applied(path: Path, lora_dir: Path, requests: list[Any], fmt: str = "single-file",
                   models_dir: Path | None = None) -> LoadedModel:
    """The checkpoint loaded as the WebUI loads it with the engine's `requests` applied from `lora_dir`: what a
    generation sees (the reference for the merge tool's output)."""
    from lorakit.engine.engine import LoraEngine  # noqa: PLC0415
    from lorakit.library.registry import NetworkRegistry  # noqa: PLC0415

    model = load_checkpoint_file(path, fmt, models_dir=models_dir)
    registry = NetworkRegistry([lora_dir], cache=None, hashing=False)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    report = engine.activate(requests)
    assert not report.errors and not report.not_found, (report.errors, report.not_found)
    return model


def engine_for(tmp_path: Path, model: LoadedModel) -> Any:
    """A Lora engine over `tmp_path / "Lora"` (scanned now) with `model` set."""
    from lorakit.engine.engine import LoraEngine  # noqa: PLC0415
    from lorakit.library.registry import NetworkRegistry  # noqa: PLC0415
    from modules.cache import DiskCache  # noqa: PLC0415

    registry = NetworkRegistry([tmp_path / "Lora"], DiskCache(tmp_path / "cache.json"))
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    return engine


def weight_of(model: LoadedModel, target: str) -> torch.Tensor:
    """The weight of a target layer named `unet.<path>`, `vae.<path>` or `text_encoders.<i>.<path>`."""
    part, _, path = target.partition(".")
    if part == "text_encoders":
        index, _, path = path.partition(".")
        part = f"text_encoders.{index}"
    return model.torch_modules()[part].get_submodule(path).weight
