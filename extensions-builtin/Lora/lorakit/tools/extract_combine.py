"""LoRA tools: `extract` a LoRA from the difference of two checkpoints, `combine` several LoRAs into one file.

Extract (per Linear/Conv2d layer of the UNet and text encoders that differs): D = W_tuned - W_base, flattened to
(out, in*k*k); SVD D = U S V^T; keep rank r (fixed `rank`, or the smallest r whose energy sum(S_i^2, i<r) / sum(S^2)
reaches `energy`); up = U_r S_r (out, r), down = V_r^T (r, in*k*k) reshaped to (r, in, k, k) for convolutions,
alpha = r, so that up @ down is the best rank-r approximation of D. Convolutions with k > 1 only with `conv=True`.
Each layer's relative error ||D - up@down|| / ||D|| is reported.

Combine: the requested LoRAs (with their multipliers, block weights) are applied to the model through the engine, so
the result is exactly what using them together gives; each touched layer's change (W - W0) is written: as
concatenated low-rank factors when every contribution is a plain LoRA (up = [m1 s1 up1, m2 s2 up2], down = [down1;
down2], alpha = total rank: exact), else as a full `diff` (and `diff_b` for bias changes); `rank` compresses every
layer by SVD instead (lossy; the error is reported).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from modules.safetensors_header import write_safetensors

from ..engine.engine import LoraEngine, NetworkRequest
from ..errors import LoraError
from ..formats.family import KOHYA_BASE_VERSIONS, MODELSPEC_ARCHITECTURES, SdVersion
from ..formats.keys import LayerIndex, kohya_key


class ToolError(LoraError):
    """Inputs the extract or combine tool cannot work with; the message says which."""


log = logging.getLogger(__name__)



@dataclass
class ToolReport:
    """What a tool wrote: layers, their relative approximation errors, and skipped layers with reasons."""

    layers: int = 0
    errors: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def mean_error(self) -> float:
        return sum(self.errors.values()) / len(self.errors) if self.errors else 0.0

    def summary(self) -> str:
        return (f"{self.layers} layers written, relative error max {self.max_error:.2e}, mean {self.mean_error:.2e}"
                + (f", {len(self.skipped)} skipped" if self.skipped else ""))


def low_rank(diff: torch.Tensor, rank: int | None, energy: float | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(up (out, r), down (r, in*k*k), relative error) of the SVD approximation of `diff` (see the module docstring)."""
    flat = diff.detach().float().flatten(1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    if rank is not None:
        r = max(1, min(int(rank), s.numel()))
    else:
        share = torch.cumsum(s.square(), 0) / s.square().sum().clamp_min(1e-30)
        r = int(torch.searchsorted(share, torch.tensor(float(energy or 1.0)) - 1e-7).item()) + 1
        r = max(1, min(r, s.numel()))
    up, down = u[:, :r] * s[:r], vh[:r]
    error = ((flat - up @ down).norm() / flat.norm().clamp_min(1e-30)).item()
    return up.contiguous(), down.contiguous(), error


def _factors_for(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape factors for the layer: convolutions get (r, in, k, k) down and (out, r, 1, 1) up."""
    if weight.dim() == 4:
        return up.reshape(*up.shape, 1, 1), down.reshape(down.shape[0], *weight.shape[1:])
    return up, down


def _metadata(family: str, rank: str, extra: dict[str, str]) -> dict[str, str]:
    return {"ss_network_module": "networks.lora", "ss_network_dim": rank, "ss_network_alpha": rank,
            "ss_base_model_version": KOHYA_BASE_VERSIONS[SdVersion(family)],
            "modelspec.architecture": MODELSPEC_ARCHITECTURES[SdVersion(family)], **extra}




@torch.no_grad()
def extract(base: Any, tuned: Any, out: Path, rank: int | None = None, energy: float | None = None,
            conv: bool = False, threshold: float = 1e-6) -> ToolReport:
    """Write a kohya LoRA approximating `tuned - base` (both LoadedModels of one family) to `out`."""
    if (rank is None) == (energy is None):
        raise ToolError("give exactly one of rank and energy")
    if energy is not None and not 0 < energy <= 1:
        raise ToolError(f"energy must be in (0, 1], got {energy}")
    if base.family != tuned.family:
        raise ToolError(f"the checkpoints are {base.family} and {tuned.family}; both must be the same family")
    base_layers, tuned_layers = LayerIndex(base).layers, LayerIndex(tuned).layers
    report, tensors = ToolReport(), {}
    for name, target in tqdm(base_layers.items(), desc="Extracting", unit="layer"):
        module = target.module
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or name not in tuned_layers:
            continue
        weight, other = module.weight, tuned_layers[name].module.weight
        if weight.shape != other.shape:
            report.skipped[name] = f"shapes differ: {tuple(weight.shape)} vs {tuple(other.shape)}"
            continue
        if weight.dim() == 4 and weight.shape[2:] != (1, 1) and not conv:
            continue
        diff = other.float() - weight.float()
        if diff.abs().max() <= threshold * max(weight.abs().max().item(), 1e-12):
            continue
        up, down, error = low_rank(diff, rank, energy)
        up, down = _factors_for(weight, up, down)
        key = kohya_key(name, len(base.text_encoders))
        tensors |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
                    f"{key}.alpha": torch.tensor(float(down.shape[0]))}
        report.errors[name] = error
        report.layers += 1
    if not tensors:
        raise ToolError("the checkpoints do not differ in any layer a LoRA can hold")
    label = str(rank) if rank is not None else f"energy {energy}"
    write_safetensors(out, tensors, _metadata(base.family, str(rank or "dynamic"), {
        "ss_output_name": out.stem, "lora_tools.extract": f"rank {label}, conv {conv}",
        "lora_tools.max_relative_error": f"{report.max_error:.3e}"}))
    log.info("extract: %s", report.summary())
    return report


@torch.no_grad()
def combine(engine: LoraEngine, requests: list[NetworkRequest], out: Path, rank: int | None = None) -> ToolReport:
    """Write one LoRA equal to applying `requests` together on `engine.model` (see the module docstring)."""
    model = engine.model
    activation = engine.activate(requests)
    problems = [f"Lora not found: {', '.join(activation.not_found)}"] if activation.not_found else []
    problems += [f"Lora {n}: {m}" for n, m in activation.errors.items()]
    if problems:
        engine.deactivate_all()
        raise ToolError("; ".join(problems))
    report, tensors = ToolReport(), {}
    try:
        for change in tqdm(engine.layer_changes(), desc="Combining", unit="layer"):
            name, module = change.name, change.target.module
            key = kohya_key(name, len(model.text_encoders))
            factors = [c.module.low_rank(c.multiplier, c.dyn_dim) for c in change.applied]
            bias_changed = (getattr(module, "bias", None) is not None and change.bias_was_none) or (
                change.pristine_bias is not None and not torch.equal(module.bias.detach().cpu(), change.pristine_bias))
            if rank is None and all(f is not None for f in factors) and not bias_changed:
                up = torch.cat([f[0].float() for f in factors], dim=1)
                down = torch.cat([f[1].float() for f in factors], dim=0)
                up, down = _factors_for(module.weight, up, down)
                tensors |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
                            f"{key}.alpha": torch.tensor(float(down.shape[0]))}
                report.errors[name] = 0.0
            else:
                diff = module.weight.detach().float().cpu() - change.pristine_weight.float()
                if rank is not None:
                    up, down, error = low_rank(diff, rank, None)
                    up, down = _factors_for(module.weight, up, down)
                    tensors |= {f"{key}.lora_up.weight": up, f"{key}.lora_down.weight": down,
                                f"{key}.alpha": torch.tensor(float(down.shape[0]))}
                    report.errors[name] = error
                else:
                    tensors[f"{key}.diff"] = diff
                    report.errors[name] = 0.0
                if bias_changed:
                    before = torch.zeros_like(module.bias) if change.bias_was_none else change.pristine_bias
                    tensors[f"{key}.diff_b"] = module.bias.detach().float().cpu() - before.float().cpu()
            report.layers += 1
    finally:
        engine.deactivate_all()
    names = ", ".join(f"{r.name}:{r.unet_multiplier:g}" for r in requests)
    write_safetensors(out, tensors, _metadata(model.family, str(rank or "mixed"), {"ss_output_name": out.stem,
                                                                       "lora_tools.combine": names}))
    log.info("combine: %s", report.summary())
    return report
