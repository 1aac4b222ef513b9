"""LoKr (Kronecker product, ``lokr_*``): ``ΔW = s · kron(w1, w2)`` reshaped to the layer.

``w1`` = ``lokr_w1`` (a, c) or ``lokr_w1_a`` (a, r) @ ``lokr_w1_b`` (r, c).
``w2`` = ``lokr_w2`` (b, d[, k...]), or ``lokr_w2_a`` (b, r) @ ``lokr_w2_b`` (r, d·k... or (r, d, k...)),
or Tucker (``lokr_t2`` (r, r, k...), ``lokr_w2_a`` (r, b), ``lokr_w2_b`` (r, d)):
``w2[p, q, k...] = Σ w2a[i, p] · t2[i, j, k...] · w2b[j, q]``. Output (a·b, c·d[, k...]).
``lokr_t1`` (never written by LyCORIS, read by ComfyUI) rebuilds ``w1`` the same way.

Scale (LyCORIS): ``s = alpha / r`` with ``r`` the rank of a decomposed factor (rows of ``lokr_w2_b``, else
of ``lokr_w1_b``); when both factors are full matrices ``s = 1`` and alpha is ignored. LyCORIS 4.1.3
``merge_to`` applies the scale twice; its forward (followed here) applies it once.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from . import tensor_math
from .base import NetworkModule


class ModuleTypeLokr(NetworkModule):
    """LoKr with full or factored halves, Tucker second half and DoRA."""

    algorithm: ClassVar[str] = "LoKr"
    parts: ClassVar[tuple[str, ...]] = (
        "lokr_w1",
        "lokr_w1_a",
        "lokr_w1_b",
        "lokr_w2",
        "lokr_w2_a",
        "lokr_w2_b",
        "lokr_t1",
        "lokr_t2",
    )
    supports_dora: ClassVar[bool] = True

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        has_w1 = "lokr_w1" in weights or ("lokr_w1_a" in weights and "lokr_w1_b" in weights)
        has_w2 = "lokr_w2" in weights or ("lokr_w2_a" in weights and "lokr_w2_b" in weights)
        return has_w1 and has_w2

    def _half_shape(self, index: int) -> tuple[int, ...]:
        """Shape of half ``index`` (1 or 2) from its parts; raise PartsError when they do not chain."""
        w = self.weights
        if f"lokr_w{index}" in w:
            return tuple(w[f"lokr_w{index}"].shape)
        a, b = w[f"lokr_w{index}_a"], w[f"lokr_w{index}_b"]
        core = w.get(f"lokr_t{index}")
        if core is not None:
            if (
                core.dim() < 3
                or a.dim() != 2
                or b.dim() != 2
                or core.shape[0] != a.shape[0]
                or core.shape[1] != b.shape[0]
            ):
                raise PartsError(
                    f"{self.key}: LoKr Tucker shapes do not chain: lokr_t{index} {tuple(core.shape)}, "
                    f"lokr_w{index}_a {tuple(a.shape)}, lokr_w{index}_b {tuple(b.shape)}"
                )
            return (a.shape[1], b.shape[1], *core.shape[2:])
        if a.dim() != 2 or b.dim() < 2 or a.shape[1] != b.shape[0]:
            raise PartsError(
                f"{self.key}: LoKr rank mismatch: lokr_w{index}_a {tuple(a.shape)} vs lokr_w{index}_b {tuple(b.shape)}"
            )
        return (a.shape[0], *b.shape[1:])

    def _parse(self) -> None:
        w1_shape, w2_shape = self._half_shape(1), self._half_shape(2)
        self._out_rows = w1_shape[0] * w2_shape[0]
        self._out_numel = torch.Size(w1_shape).numel() * torch.Size(w2_shape).numel()
        if "lokr_w2_b" in self.weights and "lokr_w2" not in self.weights:
            self.rank = self.weights["lokr_w2_b"].shape[0]
        elif "lokr_w1_b" in self.weights and "lokr_w1" not in self.weights:
            self.rank = self.weights["lokr_w1_b"].shape[0]
        else:
            self.rank = None  # both halves full: scale 1, alpha ignored

    @property
    def scale(self) -> float:
        """``alpha / r`` as for LoRA, but exactly 1 when both halves are full matrices (LyCORIS)."""
        if self.rank is None and self.scale_override is None:
            return 1.0
        return super().scale

    def delta_numel(self) -> int | None:
        return self._out_numel

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """Also require the Kronecker rows to equal the layer's output rows."""
        super().validate(layer_weight_shape)
        if self._out_rows != layer_weight_shape[0]:
            raise PartsError(
                f"{self.key}: LoKr output rows {self._out_rows} do not fit layer weight shape {tuple(layer_weight_shape)}"
            )

    def _half(self, weight: torch.Tensor, index: int) -> torch.Tensor:
        if f"lokr_w{index}" in self.weights:
            return self._part(f"lokr_w{index}", weight)
        a, b = self._part(f"lokr_w{index}_a", weight), self._part(f"lokr_w{index}_b", weight)
        if f"lokr_t{index}" in self.weights:
            return tensor_math.rebuild_tucker(self._part(f"lokr_t{index}", weight), a.t(), b)
        return (a @ tensor_math.as_2d(b)).reshape(a.shape[0], *b.shape[1:])

    def _raw_delta(self, weight: torch.Tensor, dyn_dim: int | None, gamma: float) -> torch.Tensor:
        w1, w2 = self._half(weight, 1) * gamma, self._half(weight, 2)
        if weight.dim() == 2:  # conv-shaped 1x1 halves on a Linear layer
            w1, w2 = tensor_math.as_2d(w1), tensor_math.as_2d(w2)
        return tensor_math.make_kron(w1, w2)
