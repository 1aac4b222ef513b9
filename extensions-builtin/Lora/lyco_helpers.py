"""A1111's `lyco_helpers` module for third-party extensions (`import lyco_helpers`): the LyCORIS rebuild helpers
under A1111's names and argument orders, computed by the engine's own math (`lorakit.algorithms.tensor_math`).

* `make_weight_cp(t, wa, wb)`: Tucker rebuild of a LoHa factor, `W[o, c, k...] = sum_ab wa[a, o] t[a, b, k...] wb[b, c]`.
* `rebuild_conventional(up, down, shape, dyn_dim=None)`: `up @ down` reshaped to `shape`, rank cut at `dyn_dim`.
* `rebuild_cp_decomposition(up, down, mid)`: Tucker rebuild of a LoCon layer from `lora_up`, `lora_down`, `lora_mid`.
* `factorization(dimension, factor=-1)`: the split LoKr and Diag-OFT use to size their factors.
"""

from __future__ import annotations

import torch

from lorakit.algorithms.tensor_math import as_2d, factorization, rebuild_tucker

__all__ = ["factorization", "make_weight_cp", "rebuild_conventional", "rebuild_cp_decomposition"]


def make_weight_cp(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Tucker rebuild with the first factor stored transposed (A1111/LyCORIS LoHa Tucker): `wa` (r1, out),
    `t` (r1, r2, k...), `wb` (r2, in) -> (out, in, k...)."""
    return rebuild_tucker(t, wa.transpose(0, 1), wb)


def rebuild_conventional(up: torch.Tensor, down: torch.Tensor, shape: tuple[int, ...] | torch.Size,
                         dyn_dim: int | None = None) -> torch.Tensor:
    """`up @ down` (both flattened to 2-D) reshaped to `shape`; `dyn_dim` keeps only the first ranks."""
    up2d, down2d = as_2d(up), as_2d(down)
    if dyn_dim is not None:
        up2d, down2d = up2d[:, :dyn_dim], down2d[:dyn_dim]
    return (up2d @ down2d).reshape(shape)


def rebuild_cp_decomposition(up: torch.Tensor, down: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
    """Tucker rebuild of a LoCon layer: `up` (out, r1, ...), `mid` (r1, r2, k...), `down` (r2, in, ...)."""
    return rebuild_tucker(mid, as_2d(up), as_2d(down))
