"""GLoRA (``a1.weight``, ``a2.weight``, ``b1.weight``, ``b2.weight``, ``alpha``; optional Tucker ``bm.weight``).

LyCORIS layout (current): ``a1`` (in, r), ``a2`` (r, in), ``b1`` (out, r), ``b2`` (r, in[, k...]):
``ΔW = s · (W ×₁ a1 a2 + b1 @ b2)`` where ``W ×₁ A`` contracts the layer weight's input axis
(``W @ a1 @ a2`` for Linear; per kernel position for conv), ``s = alpha / r`` with ``r = a2.shape[0]``.
With ``bm`` (r, r, k...) the ``b`` half is the Tucker rebuild ``Σ b1[o, i] · bm[i, j, k...] · b2[j, c]``.

Old layout (older LyCORIS, what A1111 implements): ``a1`` (r, in), ``a2`` (in, r), ``b1`` (r, in),
``b2`` (out, r): ``ΔW = s · (b2 @ b1 + W @ a2 @ a1)``, ``r = a1.shape[0]``. The layout is told from the
shapes; when both fit (square Linear layers) the rank axis is taken as the smaller one of ``a2``.

Difference: A1111 ignores alpha (scale 1); LyCORIS (followed here) scales by ``alpha / r``. ``W`` is the
weight given to :meth:`calc_delta` (the layer's current weight), so results depend on merge order.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from . import tensor_math
from .base import NetworkModule

FACTOR_PARTS = ("a1.weight", "a2.weight", "b1.weight", "b2.weight")


class ModuleTypeGLora(NetworkModule):
    """Generalised LoRA: a weight-dependent term plus a low-rank term."""

    algorithm: ClassVar[str] = "GLoRA"
    parts: ClassVar[tuple[str, ...]] = (*FACTOR_PARTS, "bm.weight")

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        return all(name in weights for name in FACTOR_PARTS)

    def _parse(self) -> None:
        a1, a2, b1, b2 = (tensor_math.as_2d(self.weights[name]) for name in FACTOR_PARTS)
        bm = self.weights.get("bm.weight")
        new_ok = (
            a1.shape[1] == a2.shape[0] and a2.shape[1] == a1.shape[0] and (bm is not None or b1.shape[1] == b2.shape[0])
        )
        old_ok = (
            bm is None
            and a2.shape[1] == a1.shape[0]
            and a1.shape[1] == a2.shape[0]
            and b2.shape[1] == b1.shape[0]
            and self.weights["b2.weight"].dim() == 2
        )
        if new_ok and old_ok:
            self.old_layout = a2.shape[0] > a2.shape[1]
        elif new_ok or old_ok:
            self.old_layout = old_ok
        else:
            raise PartsError(
                f"{self.key}: GLoRA shapes do not chain: a1 {tuple(a1.shape)}, a2 {tuple(a2.shape)}, "
                f"b1 {tuple(b1.shape)}, b2 {tuple(b2.shape)}"
            )
        if bm is not None and (bm.dim() < 3 or bm.shape[0] != b1.shape[1] or bm.shape[1] != b2.shape[0]):
            raise PartsError(f"{self.key}: GLoRA bm.weight {tuple(bm.shape)} does not chain with b1/b2")
        self.rank = a1.shape[0] if self.old_layout else a2.shape[0]

    def _out_rows(self) -> int:
        return self.weights["b2.weight" if self.old_layout else "b1.weight"].shape[0]

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """Rows must match ``b1`` (``b2`` in the old layout); the ``a`` chain must match the input axis."""
        super().validate(layer_weight_shape)
        shape = tuple(layer_weight_shape)
        a_in = self.weights["a1.weight"].shape[1 if self.old_layout else 0]
        b_numel = (
            self._out_rows()
            * tensor_math.as_2d(self.weights["b1.weight" if self.old_layout else "b2.weight"]).shape[1]
        )
        if "bm.weight" in self.weights:
            b_numel = self._out_rows() * self.weights["b2.weight"].shape[1] * self.weights["bm.weight"][0, 0].numel()
        if len(shape) < 2 or self._out_rows() != shape[0] or a_in != shape[1] or b_numel != torch.Size(shape).numel():
            raise PartsError(
                f"{self.key}: GLoRA factors (a1 {tuple(self.weights['a1.weight'].shape)}, b1 "
                f"{tuple(self.weights['b1.weight'].shape)}, b2 {tuple(self.weights['b2.weight'].shape)}) do not fit "
                f"layer weight shape {shape}"
            )

    def _raw_delta(self, weight: torch.Tensor, dyn_dim: int | None, gamma: float) -> torch.Tensor:
        a1, a2, b1, b2 = (tensor_math.as_2d(self._part(name, weight)) for name in FACTOR_PARTS)
        base = weight.to(a1.dtype)
        if self.old_layout:
            a_first, a_second, wb = a2, a1, (b2 * gamma) @ b1
        else:
            a_first, a_second = a1, a2
            if "bm.weight" in self.weights:
                wb = tensor_math.rebuild_tucker(self._part("bm.weight", weight), b1 * gamma, b2)
            else:
                wb = (b1 * gamma) @ b2
        wa = torch.einsum("o i ..., i j -> o j ...", base, a_first @ (a_second * gamma))
        return wa.add_(wb.reshape(weight.shape))
