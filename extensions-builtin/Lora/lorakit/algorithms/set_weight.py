"""Set weight (``set_weight``; ComfyUI's "set"): the file holds the layer's new weight itself, not a difference.

BFL's Flux control LoRAs (Canny, Depth) store their trained RMSNorm scales this way (`...query_norm.scale`, read by
the key resolver as ``set_weight``). At strength m: ``W' = W + m · (set − W)``, so m = 1 gives exactly the file's
weight (what diffusers' loader does: it overwrites those norms whatever the strength), m = 0 leaves the layer as it is,
and a strength in between interpolates. ``W`` is the layer's weight when this module is applied (after the LoRAs
listed before it), so a set weight listed after other LoRAs on the same layer wins at m = 1. No alpha/rank scale.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from .base import Delta, NetworkModule


class ModuleTypeSetWeight(NetworkModule):
    """A replacement value for the layer's weight, blended in by the strength."""

    algorithm: ClassVar[str] = "Set"
    parts: ClassVar[tuple[str, ...]] = ("set_weight",)
    uses_common_parts: ClassVar[bool] = False

    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        return "set_weight" in weights

    def delta_numel(self) -> int | None:
        return self.weights["set_weight"].numel()

    def calc_delta(self, weight: torch.Tensor, multiplier: float, dyn_dim: int | None = None,
                   bias: torch.Tensor | None = None) -> Delta:
        """``m · (set − W)`` shaped like the layer's weight."""
        self.validate(weight.shape)
        value = self._part("set_weight", weight).reshape(weight.shape)
        return Delta((value - weight.to(value.dtype)) * multiplier)
