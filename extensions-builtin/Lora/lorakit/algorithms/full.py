"""Full fine-tune difference (``diff``, ``diff_b``): ``W' = W + m · diff``, ``b' = b + m · diff_b``.

No alpha/rank scale (a ``scale`` part, if any, multiplies the weight diff as in A1111). ``diff_b`` is returned
even for a layer without bias (A1111 creates the bias; LyCORIS would drop it, but it never writes ``diff_b``
for a bias-less layer).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Delta, NetworkModule


class ModuleTypeFull(NetworkModule):
    """Dense weight (and bias) difference."""

    algorithm: ClassVar[str] = "Full"
    parts: ClassVar[tuple[str, ...]] = ("diff", "diff_b")

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        return "diff" in weights

    def delta_numel(self) -> int | None:
        return self.weights["diff"].numel()

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """``diff`` must have the layer weight's element count and rows; ``diff_b`` one entry per row."""
        super().validate(layer_weight_shape)
        diff = self.weights["diff"]
        if diff.shape[0] != layer_weight_shape[0]:
            raise self._shape_error("diff", diff.shape, layer_weight_shape)
        diff_b = self.weights.get("diff_b")
        if diff_b is not None and diff_b.numel() != layer_weight_shape[0]:
            raise self._shape_error("diff_b", diff_b.shape, layer_weight_shape[:1])

    def _raw_delta(self, weight: torch.Tensor, dyn_dim: int | None, gamma: float) -> torch.Tensor:
        return self._part("diff", weight) * gamma  # always a fresh tensor, never the stored part

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """``(m · diff, m · diff_b)``."""
        delta = super().calc_delta(weight, multiplier, dyn_dim, bias)
        if "diff_b" in self.weights:
            delta.bias = self._part("diff_b", weight).reshape(-1) * multiplier
        return delta
