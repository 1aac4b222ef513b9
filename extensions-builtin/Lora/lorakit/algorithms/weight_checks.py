"""The one set of finiteness and magnitude checks every application method uses (native merge in the patcher, the
diffusers/PEFT method and its fallback, and the tools, which apply through the engine).

Two ways a LoRA gives a black image without any error: NaN/Inf values (in its tensors, its alphas, its adapter
metadata), and finite values so large that the activations overflow during sampling. So a delta is refused when

    not finite(ΔW)                                    (NaN or Inf anywhere), or
    max|ΔW| > DELTA_LIMIT * max(1, max|W0|)           (absurdly large next to the layer's own weights).

Real LoRAs, even at weight 10-20, change entries by well under 100x the layer's largest weight; DELTA_LIMIT = 1e4
leaves a wide margin. Low-rank deltas are bounded without forming them: for ΔW = s * up @ down,
max|ΔW| <= |s| * ||up||_F * ||down||_F (Cauchy-Schwarz per entry), or <= |s| * r * max|up| * max|down|.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

DELTA_LIMIT = 1e4


def delta_limit(pristine_amax: float) -> float:
    """The largest |ΔW| entry accepted on a layer whose own largest |W0| is `pristine_amax`."""
    return DELTA_LIMIT * max(1.0, pristine_amax if math.isfinite(pristine_amax) else 1.0)


def scalar_problem(name: str, value: float | int | None) -> str | None:
    """Why a scale factor (alpha, multiplier, scale) cannot be used, or None."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return f"{name} is {value!r}, not a number"
    if not math.isfinite(number):
        return f"{name} is {number}, not a finite number"
    return None


def bound_problem(bound: float, pristine_amax: float = 1.0) -> str | None:
    """Why a proven bound on max|ΔW| is unacceptable (NaN/Inf, or over `delta_limit`), or None."""
    if not math.isfinite(bound):
        return "its delta has NaN or Inf values"
    if bound > delta_limit(pristine_amax):
        return (f"its delta is absurdly large (up to {bound:.3g} per weight, limit {delta_limit(pristine_amax):.3g}): "
                "it would turn the image black")
    return None


def merged_problem(merged_amax: float, pristine_amax: float, dtype: torch.dtype) -> str | None:
    """Why a merged weight whose largest |entry| is `merged_amax` is unacceptable, or None. NaN fails every
    comparison, so it is caught too."""
    if not merged_amax <= torch.finfo(dtype).max:
        return "the merged weight has NaN or Inf values"
    if not merged_amax <= pristine_amax + delta_limit(pristine_amax):
        return (f"the merged weight is absurdly large (max |W| {merged_amax:.3g}, the layer's own "
                f"{pristine_amax:.3g}): it would turn the image black")
    return None


def tensors_problem(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The first floating tensor holding NaN or Inf, named, or None."""
    for key, tensor in tensors:
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            return f"{key} has NaN or Inf values"
    return None
