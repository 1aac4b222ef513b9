"""BOFT, butterfly orthogonal fine-tuning (LyCORIS ``boft``; 4-D ``oft_blocks`` (m, k, b, b)).

``R_i = Cayley(B_i − B_iᵀ)`` (constraint ``c = alpha · out`` over all blocks, ``constraint`` part replacing
``alpha`` when present, as Diag-OFT). For stage
``i = 0 … m−1`` with ``g = 2``, ``h = 2^i · b/2``: permute the output rows ``(c g h) → (c h g)``, group them in
blocks of ``b``, left-multiply block ``j`` by ``S_ij = mult · R_ij + (1 − mult) · I`` (the multiplier
interpolates *each stage*, LyCORIS forward), undo the permutation. Then ``W' = rescale ⊙ W_m`` (``rescale``
(out, 1, ...) not interpolated) and ``ΔW = W' − W``. The layer bias is untouched.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from . import tensor_math
from .base import Delta, NetworkModule


class ModuleTypeBoft(NetworkModule):
    """Butterfly OFT."""

    algorithm: ClassVar[str] = "BOFT"
    parts: ClassVar[tuple[str, ...]] = ("oft_blocks", "rescale", "alpha", "constraint")
    uses_common_parts: ClassVar[bool] = False

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        blocks = weights.get("oft_blocks")
        return blocks is not None and blocks.dim() == 4

    def _parse(self) -> None:
        blocks = self.weights["oft_blocks"]
        if blocks.shape[2] != blocks.shape[3] or blocks.shape[2] % 2:
            raise PartsError(f"{self.key}: BOFT blocks must be (m, k, b, b) with even b, got {tuple(blocks.shape)}")
        self.stages, self.num_blocks, self.block_size = blocks.shape[0], blocks.shape[1], blocks.shape[2]
        factor = self._scalar("constraint")
        self.constraint_factor = factor if factor is not None else (self.alpha or 0.0)
        self.rank = self.num_blocks

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """Blocks must tile the output rows and every butterfly stage must fit them."""
        out = layer_weight_shape[0]
        half = self.block_size // 2
        if self.num_blocks * self.block_size != out or out % (2**self.stages * half):
            raise PartsError(
                f"{self.key}: BOFT blocks {tuple(self.weights['oft_blocks'].shape)} do not fit the {out} output rows "
                f"of layer weight shape {tuple(layer_weight_shape)}"
            )
        rescale = self.weights.get("rescale")
        if rescale is not None and rescale.numel() != out:
            raise self._shape_error("rescale", rescale.shape, (out, *[1] * (len(layer_weight_shape) - 1)))

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """``ΔW = rescale ⊙ butterfly(W) − W``."""
        self.validate(weight.shape)
        r = tensor_math.cayley(self._part("oft_blocks", weight), self.constraint_factor * weight.shape[0])
        base = weight.to(r.dtype)
        eye = torch.eye(self.block_size, device=r.device, dtype=r.dtype)
        current = base
        half = self.block_size // 2
        for stage in range(self.stages):
            s = multiplier * r[stage] + (1 - multiplier) * eye
            span = 2**stage * half
            permuted = current.unflatten(0, (-1, 2, span)).transpose(1, 2).flatten(0, 2)
            blocks = permuted.unflatten(0, (-1, self.block_size))
            mixed = torch.bmm(s, blocks.flatten(2)).reshape(blocks.shape).flatten(0, 1)  # per block: S_k @ B_k
            current = mixed.unflatten(0, (-1, span, 2)).transpose(1, 2).flatten(0, 2)
        if "rescale" in self.weights:
            current = current * self._part("rescale", weight).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        return Delta(current - base)
