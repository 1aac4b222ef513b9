"""Base class and shared types of the per-layer network strategies (LoRA, LoHa, LoKr, IA3, ...).

A *network module* is the group of tensors a LoRA-like file stores for one model layer (the file keys
``<network key>.<part>``), interpreted by one strategy. Every strategy turns its tensors plus the layer's
current weight into a :class:`Delta` such that the merged layer is ``W + delta.weight`` (and ``b + delta.bias``).

Reference semantics: what the LyCORIS library computes at inference (its module ``forward``) for the same
file; where A1111 or ComfyUI differ, the strategy module says so in its docstring.

Every part a strategy consumes must hold values: an empty one (a rank-0 factor) is refused with a PartsError (a ValueError), as are
parts whose shapes make the strategy's own parsing fail in any other way (the message names the key and the shapes).

Common parts read here (all optional):

* ``alpha``: scalar; the strength scale of low-rank strategies is ``alpha / rank``. As in LyCORIS, an
  absent or zero alpha means "no scaling" (scale 1). (A1111 would scale by 0 for ``alpha == 0``.)
* ``scale``: scalar; when present it replaces ``alpha / rank`` (A1111's ``scale`` part).
* ``dora_scale``: DoRA magnitude, see :func:`tensor_math.weight_decompose`.
* ``bias`` (or sparse ``bias_indices``/``bias_values``/``bias_size``): the legacy LyCORIS additive weight
  offset, added to the raw delta *before* scaling (A1111 ``finalize_updown``). It is not a layer bias.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..errors import PartsError
from . import tensor_math

logger = logging.getLogger(__name__)

COMMON_PARTS = ("alpha", "scale", "dora_scale", "bias", "bias_indices", "bias_values", "bias_size")


@dataclass
class Delta:
    """What one network module adds to one layer.

    ``weight``: same shape as the layer weight, on its device, in the compute dtype (float32, or the weight's
    own dtype when that is float32/bfloat16 on an accelerator). ``bias``: same shape as the layer bias, or None.
    """

    weight: torch.Tensor | None
    bias: torch.Tensor | None = None


class NetworkModule:
    """One strategy's view of the tensors stored for one layer.

    Subclasses set ``algorithm``, ``parts`` (every part name they consume, besides :data:`COMMON_PARTS`),
    implement :meth:`claims` and :meth:`_parse` (shape checks, rank), and either :meth:`_raw_delta`
    (additive strategies: the un-scaled delta, reshaped to the layer) or override :meth:`calc_delta`.
    """

    algorithm: ClassVar[str] = ""
    parts: ClassVar[tuple[str, ...]] = ()
    supports_dora: ClassVar[bool] = False
    uses_common_parts: ClassVar[bool] = True

    def __init__(self, key: str, weights: dict[str, torch.Tensor]):
        consumed = set(self.parts) | (set(COMMON_PARTS) if self.uses_common_parts else set())
        self.key = key
        self.weights = {name: tensor for name, tensor in weights.items() if name in consumed}
        ignored = sorted(set(weights) - consumed)
        if ignored:
            logger.warning("%s: %s ignores parts %s", key, self.algorithm, ", ".join(ignored))
        tensor_math.check_finite(key, self.weights)
        for name in self.parts:  # a rank-0 factor would fail later inside torch with a message naming nothing
            tensor = self.weights.get(name)
            if tensor is not None and tensor.numel() == 0:
                raise PartsError(f"{key}: {self.algorithm} part {name!r} is empty (shape {tuple(tensor.shape)}, rank 0?)")
        self.rank: int | None = None
        self.alpha: float | None = self._scalar("alpha")
        self.scale_override: float | None = self._scalar("scale")
        self.dora_scale: torch.Tensor | None = self.weights.get("dora_scale")
        self.is_dora = self.dora_scale is not None
        if self.is_dora and not self.supports_dora:
            raise PartsError(f"{key}: {self.algorithm} does not support a dora_scale part")
        self.weight_offset = tensor_math.legacy_weight_offset(key, self.weights)
        try:
            self._parse()
        except (IndexError, RuntimeError, TypeError, ValueError) as exc:  # parts too malformed for the strategy's own checks
            shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in sorted(self.weights.items()))
            raise PartsError(f"{key}: {self.algorithm} parts do not fit together ({shapes}): {exc}") from exc

    # ----------------------------------------------------------------------------------------------- building
    @classmethod
    def claims(cls, weights: dict[str, torch.Tensor]) -> bool:
        """True when the group's parts are this strategy's (checked in registry order)."""
        raise NotImplementedError

    @classmethod
    def from_weights(cls, key: str, weights: dict[str, torch.Tensor]) -> NetworkModule | None:
        """An instance for the group, or None when the parts are not this strategy's.

        Raises PartsError (naming the key) when the parts are this strategy's but malformed.
        """
        if not cls.claims(weights):
            return None
        return cls(key, weights)

    def _parse(self) -> None:
        """Check the parts' shapes against each other and set ``self.rank``; raise PartsError when malformed."""

    def _scalar(self, part: str) -> float | None:
        tensor = self.weights.get(part)
        if tensor is None:
            return None
        if tensor.numel() != 1:
            raise PartsError(f"{self.key}: part {part!r} must be a scalar, got shape {tuple(tensor.shape)}")
        return float(tensor.float().item())

    def _part(self, name: str, weight: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Part ``name`` on ``weight``'s device in ``dtype`` (default: the compute dtype for ``weight``)."""
        return self.weights[name].to(device=weight.device, dtype=dtype or tensor_math.compute_dtype(weight))

    def _shape_error(self, what: str, got, expected) -> PartsError:
        return PartsError(
            f"{self.key}: {self.algorithm} {what} shape {tuple(got)} does not fit, expected {tuple(expected)}"
        )

    # ----------------------------------------------------------------------------------------------- scale
    @property
    def scale(self) -> float:
        """The strength scale ``s``: ``scale`` part, else ``alpha / rank``, else 1 (alpha 0 or absent)."""
        if self.scale_override is not None:
            return self.scale_override
        if self.alpha is None or self.alpha == 0 or not self.rank:
            return 1.0
        return self.alpha / self.rank

    # ----------------------------------------------------------------------------------------------- shapes
    def delta_numel(self) -> int | None:
        """Number of elements of the raw delta, when known from the parts alone (None: depends on the layer)."""
        return None

    def validate(self, layer_weight_shape: torch.Size) -> None:
        """Raise PartsError naming the key when this module cannot apply to a layer weight of that shape."""
        shape = torch.Size(layer_weight_shape)
        numel = self.delta_numel()
        if numel is not None and numel != shape.numel():
            raise PartsError(
                f"{self.key}: {self.algorithm} delta has {numel} elements, layer weight shape {tuple(shape)} "
                f"expected {shape.numel()}"
            )
        if self.weight_offset is not None and self.weight_offset.numel() != shape.numel():
            raise self._shape_error("bias (weight offset)", self.weight_offset.shape, shape)
        if self.dora_scale is not None:
            tensor_math.dora_on_output(self.key, self.dora_scale.shape, shape)

    # ----------------------------------------------------------------------------------------------- math
    def _raw_delta(self, weight: torch.Tensor, dyn_dim: int | None, gamma: float) -> torch.Tensor:
        """``gamma ·`` the raw delta, in the compute dtype, reshapeable to ``weight.shape``.

        Implementations fold ``gamma`` into their smallest factor (no extra full-size temporary) and must
        return a fresh tensor, never a stored part itself.
        """
        raise NotImplementedError

    def diff_weight(self, weight: torch.Tensor, dyn_dim: int | None = None, multiplier: float = 1.0) -> torch.Tensor:
        """``m · s · (raw + offset)`` shaped like ``weight`` in the compute dtype (``m = 1``: LyCORIS' ΔW)."""
        self.validate(weight.shape)
        gamma = self.scale * multiplier
        if self.weight_offset is None:
            return self._raw_delta(weight, dyn_dim, gamma).reshape(weight.shape)
        raw = self._raw_delta(weight, dyn_dim, 1.0).reshape(weight.shape)
        raw += self.weight_offset.to(device=raw.device, dtype=raw.dtype).reshape(weight.shape)
        return raw.mul_(gamma)

    def calc_delta(
        self,
        weight: torch.Tensor,
        multiplier: float,
        dyn_dim: int | None = None,
        bias: torch.Tensor | None = None,
    ) -> Delta:
        """The delta for the layer's current ``weight``/``bias`` (never modified) at ``multiplier``.

        Additive strategies: ``m · ΔW``. With DoRA (LyCORIS rule): ``W' = (W + ΔW) · (m · (g/‖W+ΔW‖ − 1) + 1)``,
        so the delta is ``W' − W`` (at m = 0 the plain ΔW is still applied, as in LyCORIS).
        """
        if self.dora_scale is None:
            return Delta(self.diff_weight(weight, dyn_dim, multiplier))
        diff = self.diff_weight(weight, dyn_dim)
        base = weight.to(diff.dtype)
        on_output = tensor_math.dora_on_output(self.key, self.dora_scale.shape, weight.shape)
        merged = tensor_math.weight_decompose(
            base + diff, self._part("dora_scale", weight, diff.dtype), multiplier, on_output
        )
        return Delta(merged - base)

    def low_rank(
        self,
        multiplier: float,
        dyn_dim: int | None = None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Optional fast path: ``(up2d, down2d)`` with ``delta.flatten(1) == up2d @ down2d``; None if not linear."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.key} rank={self.rank} alpha={self.alpha} dora={self.is_dora}>"
