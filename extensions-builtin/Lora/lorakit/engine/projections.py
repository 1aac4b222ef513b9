"""Fused <-> split projections: a module stored for a fused layer applied to one of the split layers it stands for.

Flux files name BFL's fused projections (`img_attn.qkv` = q, k, v stacked by rows; a single block's `linear1` = q,
k, v, mlp), while the loaded transformer has diffusers' split layers (`attn.to_q`, ...). The fused layer's output
rows are the split layers' outputs concatenated, so the fused delta's rows are the split deltas:

    delta_fused = [delta_q; delta_k; delta_v]  (rows),  delta_q = delta_fused[0:h]

* LoRA (a low-rank up @ down): delta_q = up[0:h] @ down, the up factor's rows (no full-size fused delta).
* LoKr, LoHa, full weights: the full fused delta (fused rows x in), then its rows; exact, because these deltas do
  not depend on the layer's weight.
* Strategies whose delta depends on the weight (DoRA, OFT/BOFT, IA3, GLoRA) need the fused layer's weight, which a
  split model does not have: refused with a message saying so (reported by the loader, never silently dropped).

`rows` may list several spans: BFL's final modulation is diffusers' with its (shift, scale) halves swapped,
rows ((h, 2h), (0, h)).
"""

from __future__ import annotations

import torch

from ..algorithms.base import Delta, NetworkModule
from ..errors import PartsError

WEIGHT_FREE = ("LoRA", "LoHa", "LoKr", "Full")


class FusedRowsModule:
    """`inner` (a module for a layer `fused_rows` high) acting on one split layer: rows `rows` of its delta."""

    def __init__(self, inner: NetworkModule, rows: tuple[tuple[int, int], ...], fused_rows: int) -> None:
        if inner.algorithm not in WEIGHT_FREE or getattr(inner, "is_dora", False):
            kind = "DoRA" if getattr(inner, "is_dora", False) else inner.algorithm
            raise PartsError(f"{inner.key}: {kind} on a fused projection needs the fused layer's weight, which the "
                             "split layers of this model do not have")
        self.inner = inner
        self.rows = rows
        self.fused_rows = fused_rows
        self.algorithm, self.rank, self.alpha, self.key = inner.algorithm, inner.rank, inner.alpha, inner.key
        self.is_dora = False

    def _take(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor[start:stop] for start, stop in self.rows]) if len(self.rows) > 1 else \
            tensor[self.rows[0][0]:self.rows[0][1]]

    def _fused_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size([self.fused_rows, *shape[1:]])

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """The rows fit the layer, and the inner module fits the fused layer."""
        height = sum(stop - start for start, stop in self.rows)
        if height != layer_weight_shape[0]:
            raise PartsError(f"{self.key}: rows {self.rows} of the fused layer do not give the layer's "
                             f"{layer_weight_shape[0]} rows")
        self.inner.validate(self._fused_shape(torch.Size(layer_weight_shape)))

    def low_rank(self, multiplier: float, dyn_dim: int | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(up rows, down) of the inner LoRA's factors, or None when it has none."""
        factors = self.inner.low_rank(multiplier, dyn_dim, **kwargs)
        if factors is None:
            return None
        up, down = factors
        return self._take(up), down

    def calc_delta(self, weight: torch.Tensor, multiplier: float, dyn_dim: int | None = None,
                   bias: torch.Tensor | None = None) -> Delta:
        """Rows `rows` of the fused delta (computed for an uninitialised fused-shape stand-in of `weight`: the
        strategies allowed here read only its shape, dtype and device)."""
        stand_in = torch.empty(self._fused_shape(weight.shape), dtype=weight.dtype, device=weight.device)
        fused_bias = None if bias is None else torch.empty((self.fused_rows,), dtype=bias.dtype, device=bias.device)
        delta = self.inner.calc_delta(stand_in, multiplier, dyn_dim, fused_bias)
        return Delta(None if delta.weight is None else self._take(delta.weight).contiguous(),
                     None if delta.bias is None else self._take(delta.bias).contiguous())
