"""LoRA / LoCon: ``ΔW = s · up · down`` (kohya ``lora_up``/``lora_down``, PEFT ``lora_B``/``lora_A``).

Shapes: ``down`` (r, in[, k...]), ``up`` (out, r[, 1...]), ``s = alpha / r`` (alpha absent or 0: s = 1, as in
LyCORIS; PEFT files get alpha from the loader). Conv layers: ``down`` may carry the k×k kernel and ``up`` is
1×1; ``ΔW = (up₂ @ down₂)`` reshaped to the layer, with ``x₂`` the 2-D (rows, rest) flattening. Conv-shaped
1×1 tensors also apply to Linear layers.

Tucker/CP (``lora_mid.weight`` (r, r, k...), LyCORIS ``use_tucker``): ``down`` and ``up`` are 1×1 and
``ΔW[o, c, k...] = Σ up[o, a] · mid[a, b, k...] · down[b, c]``.

Biases of the factors (PEFT's ``lora_bias``, BFL control LoRAs: ``lora_B.bias`` -> ``lora_up.bias`` (out,),
``lora_A.bias`` -> ``lora_down.bias`` (r,)): the layer's bias gains ``Δb = m · s · (up_bias + up₂ @ down_bias)``
(what ``B(A x + a) + b_B`` adds to the output beyond ``B A x``).

DyLoRA ``dyn`` = d (A1111): only the first d ranks, ``up₂[:, :d] @ down₂[:d]``; the scale keeps the full rank
(alpha / r). Ignored with a Tucker mid (as in A1111). DoRA (``dora_scale``, or PEFT's ``lora_magnitude_vector``):
see ``tensor_math.weight_decompose``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from ..formats.keys import DOTTED_PARTS
from . import tensor_math
from .base import Delta, NetworkModule

PEFT_RENAMES = DOTTED_PARTS  # the one PEFT -> kohya part-name table


class ModuleTypeLora(NetworkModule):
    """LoRA/LoCon with optional Tucker mid, DyLoRA rank cut, DoRA and the legacy weight offset."""

    algorithm: ClassVar[str] = "LoRA"
    parts: ClassVar[tuple[str, ...]] = ("lora_up.weight", "lora_down.weight", "lora_mid.weight", "lora_up.bias",
                                        "lora_down.bias")
    supports_dora: ClassVar[bool] = True

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        kohya = "lora_up.weight" in weights and "lora_down.weight" in weights
        peft = "lora_A.weight" in weights and "lora_B.weight" in weights
        return kohya or peft

    def __init__(self, key: str, weights: dict[str, torch.Tensor]):
        renamed = {PEFT_RENAMES.get(name, name): tensor for name, tensor in weights.items()}
        super().__init__(key, renamed)

    def _parse(self) -> None:
        up, down = self.weights["lora_up.weight"], self.weights["lora_down.weight"]
        mid = self.weights.get("lora_mid.weight")
        if up.dim() < 2 or down.dim() < 2:
            raise PartsError(
                f"{self.key}: LoRA up/down must be at least 2-D, got {tuple(up.shape)}, {tuple(down.shape)}"
            )
        rank = down.shape[0]
        if mid is None:
            if tensor_math.as_2d(up).shape[1] != rank:
                raise PartsError(
                    f"{self.key}: LoRA rank mismatch: lora_up {tuple(up.shape)} vs lora_down {tuple(down.shape)}"
                )
        else:
            if mid.dim() < 3 or up.shape[1] != mid.shape[0] or mid.shape[1] != rank:
                raise PartsError(
                    f"{self.key}: LoRA Tucker shapes do not chain: lora_up {tuple(up.shape)}, "
                    f"lora_mid {tuple(mid.shape)}, lora_down {tuple(down.shape)}"
                )
            if any(size != 1 for size in (*up.shape[2:], *down.shape[2:])):
                raise PartsError(
                    f"{self.key}: LoRA Tucker lora_up/lora_down must be 1x1, got {tuple(up.shape)}, {tuple(down.shape)}"
                )
        self.rank = rank
        for part, size in (("lora_up.bias", up.shape[0]), ("lora_down.bias", rank)):
            if part in self.weights and self.weights[part].numel() != size:
                raise PartsError(f"{self.key}: LoRA {part} has shape {tuple(self.weights[part].shape)}, "
                                 f"expected ({size},)")
        if "lora_down.bias" in self.weights and mid is not None:
            raise PartsError(f"{self.key}: a lora_down bias with a Tucker lora_mid is not a LoRA layout")

    @property
    def has_bias(self) -> bool:
        """True when the factors carry biases (the layer's bias changes too)."""
        return "lora_up.bias" in self.weights or "lora_down.bias" in self.weights

    def _has_mid(self) -> bool:
        return "lora_mid.weight" in self.weights

    def delta_numel(self) -> int | None:
        up, down = self.weights["lora_up.weight"], self.weights["lora_down.weight"]
        if self._has_mid():
            mid = self.weights["lora_mid.weight"]
            return up.shape[0] * down.shape[1] * mid[0, 0].numel()
        return up.shape[0] * tensor_math.as_2d(down).shape[1]

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """Also require the output rows to match (a pure element count could hide a transposed file)."""
        super().validate(layer_weight_shape)
        out = self.weights["lora_up.weight"].shape[0]
        if out != layer_weight_shape[0]:
            raise self._shape_error("lora_up", self.weights["lora_up.weight"].shape, (layer_weight_shape[0], self.rank))

    def _factors(self, weight: torch.Tensor, dyn_dim: int | None, dtype: torch.dtype | None = None):
        up = tensor_math.as_2d(self._part("lora_up.weight", weight, dtype))
        down = tensor_math.as_2d(self._part("lora_down.weight", weight, dtype))
        if dyn_dim is not None and 0 < dyn_dim < self.rank:
            up, down = up[:, :dyn_dim], down[:dyn_dim]
        return up, down

    def _raw_delta(self, weight: torch.Tensor, dyn_dim: int | None, gamma: float) -> torch.Tensor:
        if self._has_mid():
            up = tensor_math.as_2d(self._part("lora_up.weight", weight)) * gamma
            down = tensor_math.as_2d(self._part("lora_down.weight", weight))
            return tensor_math.rebuild_tucker(self._part("lora_mid.weight", weight), up, down)
        up, down = self._factors(weight, dyn_dim)
        return (up * gamma) @ down

    def low_rank(
        self,
        multiplier: float,
        dyn_dim: int | None = None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(up₂ · m · s, down₂)`` (cut to ``dyn_dim``) for plain LoRA; None with a mid, DoRA or weight offset.

        Tensors are on ``device`` (default: where the parts are) in ``dtype`` (default float32), never the
        stored parts themselves (callers may modify them).
        """
        if self._has_mid() or self.is_dora or self.weight_offset is not None or self.has_bias:
            return None
        ref = self.weights["lora_up.weight"]
        probe = torch.empty(0, device=device or ref.device)
        up, down = self._factors(probe, dyn_dim, dtype or torch.float32)
        if down.data_ptr() == self.weights["lora_down.weight"].data_ptr():
            down = down.clone()
        return up * (multiplier * self.scale), down

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """The weight delta (see NetworkModule.calc_delta) and, when the factors carry biases, the bias delta."""
        delta = super().calc_delta(weight, multiplier, dyn_dim, bias)
        if not self.has_bias:
            return delta
        gamma = self.scale * multiplier
        rows = self.weights["lora_up.weight"].shape[0]
        change = torch.zeros(rows, device=weight.device, dtype=tensor_math.compute_dtype(weight))
        if "lora_up.bias" in self.weights:
            change += self._part("lora_up.bias", weight).reshape(-1)
        if "lora_down.bias" in self.weights:
            up, down_bias = self._factors(weight, dyn_dim)[0], self._part("lora_down.bias", weight).reshape(-1)
            change += up @ down_bias[: up.shape[1]]
        delta.bias = change * gamma
        return delta
