"""(IA)³ (``weight``, ``on_input``): scales the layer weight per output row or per input column.

``W' = W ⊙ (1 + m · w)`` broadcast along the output axis (``on_input`` false: ``w`` has ``out`` entries) or
the input axis (``on_input`` true: ``in`` entries), so ``ΔW = m · W ⊙ w``. LyCORIS stores ``w`` as (n,) for
Linear and (1, n, 1, ...) for conv layers; both are accepted. No alpha/rank scale. The layer bias is left
alone (LyCORIS' weight-rebuild forward; its bypass forward would also scale the bias when ``on_input`` is
false). ``W`` is the weight given to :meth:`calc_delta` (the layer's current weight).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from .base import Delta, NetworkModule


class ModuleTypeIa3(NetworkModule):
    """(IA)³ per-channel weight scaling."""

    algorithm: ClassVar[str] = "IA3"
    parts: ClassVar[tuple[str, ...]] = ("weight", "on_input")
    uses_common_parts: ClassVar[bool] = False

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        return "weight" in weights and "on_input" in weights

    def _parse(self) -> None:
        flag = self.weights["on_input"]
        if flag.numel() != 1:
            raise PartsError(f"{self.key}: IA3 on_input must be a scalar, got shape {tuple(flag.shape)}")
        self.on_input = bool(flag.item())
        vector = self.weights["weight"]
        if sum(size != 1 for size in vector.shape) > 1:
            raise PartsError(f"{self.key}: IA3 weight must be a vector, got shape {tuple(vector.shape)}")

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """The vector length must equal the layer's input (``on_input``) or output channels."""
        axis = 1 if self.on_input else 0
        if len(layer_weight_shape) < 2 or self.weights["weight"].numel() != layer_weight_shape[axis]:
            raise PartsError(
                f"{self.key}: IA3 weight shape {tuple(self.weights['weight'].shape)} does not fit layer weight "
                f"shape {tuple(layer_weight_shape)}, expected {layer_weight_shape[axis : axis + 1]} entries "
                f"({'input' if self.on_input else 'output'} axis)"
            )

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """``ΔW = m · W ⊙ w`` along the chosen axis."""
        self.validate(weight.shape)
        vector = self._part("weight", weight).reshape(-1)
        base = weight.to(vector.dtype)
        shape = [1] * weight.dim()
        shape[1 if self.on_input else 0] = vector.numel()
        return Delta(base * (vector.reshape(shape) * multiplier))
