"""LoHa (Hadamard product of two low-rank products, ``hada_*``): ``ΔW = s · (w1a @ w1b) ⊙ (w2a @ w2b)``.

Plain: ``hada_w*_a`` (out, r), ``hada_w*_b`` (r, in·k...) -> (out, in·k...), reshaped to the layer.
Tucker (``hada_t1``/``hada_t2`` (r, r, k...), LyCORIS ``use_tucker``; the ``a`` factors are then stored
(r, out) and the ``b`` factors (r, in)): ``P_i[o, c, k...] = Σ w_ia[a, o] · t_i[a, b, k...] · w_ib[b, c]``.
Each factor uses its own Tucker core when present. ``s = alpha / r`` with ``r = hada_w1_b.shape[0]``
(LyCORIS' forward applies it once; its ``merge_to`` in 4.1.3 applies it twice, which is not followed).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from . import tensor_math
from .base import NetworkModule

FACTOR_PARTS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


class ModuleTypeHada(NetworkModule):
    """LoHa with optional Tucker cores and DoRA."""

    algorithm: ClassVar[str] = "LoHa"
    parts: ClassVar[tuple[str, ...]] = (*FACTOR_PARTS, "hada_t1", "hada_t2")
    supports_dora: ClassVar[bool] = True

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        return all(name in weights for name in FACTOR_PARTS)

    def _factor_shape(self, index: int) -> tuple[int, ...]:
        """Shape of factor ``index`` (1 or 2); raise PartsError when its tensors do not chain."""
        a, b = self.weights[f"hada_w{index}_a"], self.weights[f"hada_w{index}_b"]
        core = self.weights.get(f"hada_t{index}")
        if a.dim() != 2 or b.dim() < 2:
            raise PartsError(f"{self.key}: LoHa hada_w{index}_a/b must be 2-D, got {tuple(a.shape)}, {tuple(b.shape)}")
        if core is None:
            b2 = tensor_math.as_2d(b)
            if a.shape[1] != b2.shape[0]:
                raise PartsError(
                    f"{self.key}: LoHa rank mismatch: hada_w{index}_a {tuple(a.shape)} vs hada_w{index}_b {tuple(b.shape)}"
                )
            return (a.shape[0], b2.shape[1])
        if core.dim() < 3 or core.shape[0] != a.shape[0] or core.shape[1] != b.shape[0] or b.dim() != 2:
            raise PartsError(
                f"{self.key}: LoHa Tucker shapes do not chain: hada_t{index} {tuple(core.shape)}, "
                f"hada_w{index}_a {tuple(a.shape)}, hada_w{index}_b {tuple(b.shape)}"
            )
        return (a.shape[1], b.shape[1], *core.shape[2:])

    def _parse(self) -> None:
        first, second = self._factor_shape(1), self._factor_shape(2)
        if torch.Size(first).numel() != torch.Size(second).numel() or first[0] != second[0]:
            raise PartsError(f"{self.key}: LoHa factor shapes differ: {first} vs {second}")
        self.rank = self.weights["hada_w1_b"].shape[0]
        self._out_numel = torch.Size(first).numel()

    def delta_numel(self) -> int | None:
        return self._out_numel

    def _factor(self, weight: torch.Tensor, index: int, gamma: float = 1.0) -> torch.Tensor:
        a = self._part(f"hada_w{index}_a", weight) * gamma
        b = self._part(f"hada_w{index}_b", weight)
        if f"hada_t{index}" in self.weights:
            return tensor_math.rebuild_tucker(self._part(f"hada_t{index}", weight), a.t(), b)
        return a @ tensor_math.as_2d(b)

    def _raw_delta(self, weight: torch.Tensor, dyn_dim: int | None, gamma: float) -> torch.Tensor:
        product = self._factor(weight, 1, gamma).reshape(weight.shape)
        return product.mul_(self._factor(weight, 2).reshape(weight.shape))
