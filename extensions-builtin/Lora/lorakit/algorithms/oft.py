"""OFT, block-diagonal orthogonal fine-tuning: ``W' = rescale ⊙ (R_mᵀ W)`` per block of output rows.

Variants (all 3-D block tensors, (k, n, n): k blocks of n rows, ``k · n = out``):

* LyCORIS Diag-OFT and kohya OFT: ``oft_blocks`` are free blocks ``B``; ``R = Cayley(B − Bᵀ)`` with the
  optional constraint ``c = alpha · out`` (``alpha`` part = the constraint factor, replaced by a
  ``constraint`` part when one is present; absent or 0: unconstrained), see
  :func:`tensor_math.cayley`. kohya's clamp ``Q·(min(‖Q‖, c) + 1e-8)/(‖Q‖ + 1e-8)`` equals LyCORIS' rule up
  to 1e-8 relative, so one rule serves both.
* old LyCORIS ``oft_diag``: the blocks already are ``R`` (that LyCORIS saved ``get_r()``).

Multiplier (LyCORIS, kohya and A1111 agree): ``R_m = m · R + (1 − m) · I``, so the rotation part is linear in
``m``: ``R_mᵀ W = W + m (Rᵀ W − W)``. ``rescale`` (out, 1, ...) (LyCORIS ``rescaled``) multiplies the result
and is *not* interpolated by ``m`` (LyCORIS forward); A1111 ignores ``rescale``. ``ΔW = W' − W``; the layer bias
is untouched. ``W`` is the weight given to :meth:`calc_delta` (the layer's current weight).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..errors import PartsError
from . import tensor_math
from .base import Delta, NetworkModule


class ModuleTypeOft(NetworkModule):
    """Diag-OFT / kohya OFT (3-D ``oft_blocks``) and old LyCORIS ``oft_diag``."""

    algorithm: ClassVar[str] = "OFT"
    parts: ClassVar[tuple[str, ...]] = ("oft_blocks", "oft_diag", "rescale", "alpha", "constraint")
    uses_common_parts: ClassVar[bool] = False

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        blocks = weights.get("oft_blocks")
        return (blocks is not None and blocks.dim() == 3) or "oft_diag" in weights

    def _parse(self) -> None:
        self.is_r = "oft_blocks" not in self.weights
        blocks = self.weights["oft_diag" if self.is_r else "oft_blocks"]
        if blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
            raise PartsError(f"{self.key}: OFT blocks must be (k, n, n), got {tuple(blocks.shape)}")
        self.num_blocks, self.block_size = blocks.shape[0], blocks.shape[1]
        self.constraint_factor = self._scalar("constraint")
        if self.constraint_factor is None:
            self.constraint_factor = self.alpha or 0.0
        self.rank = self.num_blocks

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """Blocks must tile the output rows; ``rescale`` needs one entry per output row."""
        out = layer_weight_shape[0]
        if self.num_blocks * self.block_size != out:
            raise PartsError(
                f"{self.key}: OFT blocks {self.num_blocks}x{self.block_size} do not tile the {out} output rows "
                f"of layer weight shape {tuple(layer_weight_shape)}"
            )
        rescale = self.weights.get("rescale")
        if rescale is not None and rescale.numel() != out:
            raise self._shape_error("rescale", rescale.shape, (out, *[1] * (len(layer_weight_shape) - 1)))

    def rotation(self, weight: torch.Tensor) -> torch.Tensor:
        """The orthogonal blocks ``R`` (k, n, n) for a layer with ``weight.shape[0]`` output rows."""
        blocks = self._part("oft_diag" if self.is_r else "oft_blocks", weight)
        if self.is_r:
            return blocks
        return tensor_math.cayley(blocks, self.constraint_factor * weight.shape[0])

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """``ΔW = rescale ⊙ (R_mᵀ W) − W`` block-wise."""
        self.validate(weight.shape)
        r = self.rotation(weight)
        base = weight.to(r.dtype)
        eye = torch.eye(self.block_size, device=r.device, dtype=r.dtype)
        r_m = multiplier * r + (1 - multiplier) * eye
        blocks = base.reshape(self.num_blocks, self.block_size, *weight.shape[1:])
        rotated = torch.einsum("k n m, k n ... -> k m ...", r_m, blocks).reshape(weight.shape)
        if "rescale" in self.weights:
            rescale = self._part("rescale", weight).reshape(weight.shape[0], *[1] * (weight.dim() - 1))
            rotated = rotated * rescale
        return Delta(rotated - base)
