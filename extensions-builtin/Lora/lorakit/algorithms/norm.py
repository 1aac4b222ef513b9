"""Norm layers (``w_norm``, ``b_norm``; LyCORIS ``train_norm``): ``γ' = γ + m · w_norm``, ``β' = β + m · b_norm``.

For GroupNorm/LayerNorm affine parameters (1-D weight). No alpha/rank scale.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Delta, NetworkModule


class ModuleTypeNorm(NetworkModule):
    """Additive deltas of a normalisation layer's affine weight and bias."""

    algorithm: ClassVar[str] = "Norm"
    parts: ClassVar[tuple[str, ...]] = ("w_norm", "b_norm")
    uses_common_parts: ClassVar[bool] = False

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        return "w_norm" in weights

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """``w_norm`` (and ``b_norm``) must have the layer weight's element count."""
        numel = torch.Size(layer_weight_shape).numel()
        for part in ("w_norm", "b_norm"):
            tensor = self.weights.get(part)
            if tensor is not None and tensor.numel() != numel:
                raise self._shape_error(part, tensor.shape, layer_weight_shape)

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """``(m · w_norm, m · b_norm)`` shaped like the layer's weight and bias."""
        self.validate(weight.shape)
        delta = Delta(self._part("w_norm", weight).reshape(weight.shape) * multiplier)
        if "b_norm" in self.weights:
            delta.bias = self._part("b_norm", weight).reshape(-1) * multiplier
        return delta
