"""The patcher: writes `W = W0 + sum_i delta_i` into exactly the layers whose wanted contributions changed.

No monkey-patching: weights are merged eagerly into the modules' own parameters and stay merged between generations.
Each touched layer keeps a backup of its pristine weight (and bias) in the checkpoint's dtype on the CPU; a layer is
restored from it by a bitwise copy (never by subtracting a delta), and the backup is dropped when no network wants the
layer any more, so untouched layers never have a backup.

Deltas are computed in float32 (bfloat16/float32 stay as they are on CUDA) on the weight's device, summed onto a
working copy of the pristine weight, and written back with one copy. Counters (`PatchStats`) say what each call did.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from key_resolver import TargetLayer


@dataclass(frozen=True, eq=False)
class Contribution:
    """One network's module on one layer, with its multiplier. Equality: same module object, same numbers."""

    network: Any  # the loaded network (identity matters, not value)
    module: Any  # network.NetworkModule
    multiplier: float
    dyn_dim: int | None = None

    def signature(self) -> tuple[int, int, float, int | None]:
        return (id(self.network), id(self.module), float(self.multiplier), self.dyn_dim)


def signature(contributions: tuple[Contribution, ...]) -> tuple[tuple[int, int, float, int | None], ...]:
    return tuple(c.signature() for c in contributions)


class LayerPatchError(RuntimeError):
    """Computing one network's delta for one layer failed; the layer was left as it was."""

    def __init__(self, network: Any, layer: str, cause: BaseException) -> None:
        super().__init__(f"{getattr(network, 'name', network)}: layer {layer}: {cause}")
        self.network = network
        self.layer = layer
        self.cause = cause


@dataclass
class PatchStats:
    """What one `apply` did: layers rewritten (patched or restored), bytes written into weights, wall time."""

    layers_touched: int = 0
    layers_restored: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    touched: list[str] = field(default_factory=list)


@dataclass
class _LayerState:
    target: TargetLayer
    weight_backup: torch.Tensor
    bias_backup: torch.Tensor | None
    bias_was_none: bool
    applied: tuple = ()


def compute_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32 everywhere, except bfloat16/float32 weights on an accelerator keep their dtype."""
    if weight.device.type != "cpu" and weight.dtype in (torch.bfloat16, torch.float32):
        return weight.dtype
    return torch.float32


class Patcher:
    """Per-model patch state. `apply(wanted)` makes every layer hold pristine + exactly its wanted contributions."""

    def __init__(self) -> None:
        self.layers: dict[str, _LayerState] = {}
        self.last_stats = PatchStats()
        self.total_layers_touched = 0

    @property
    def backup_bytes(self) -> int:
        """Bytes held in backups (only layers that a network touches have one)."""
        total = 0
        for state in self.layers.values():
            total += state.weight_backup.numel() * state.weight_backup.element_size()
            if state.bias_backup is not None:
                total += state.bias_backup.numel() * state.bias_backup.element_size()
        return total

    def applied(self, layer: str) -> tuple[Contribution, ...]:
        state = self.layers.get(layer)
        return state.applied if state else ()

    @torch.no_grad()
    def apply(self, wanted: Mapping[str, tuple[Contribution, ...]], targets: Mapping[str, TargetLayer]) -> PatchStats:
        """Rewrite every layer whose wanted contributions differ from what it holds; others are not touched.

        `wanted` maps layer names to contributions in order; layers absent from it want nothing (restored).
        Raises `LayerPatchError` for the first contribution that fails; layers rewritten before stay consistent.
        """
        start = time.perf_counter()
        stats = PatchStats()
        self.last_stats = stats
        names = list(dict.fromkeys(list(self.layers) + list(wanted)))
        for name in names:
            contributions = tuple(wanted.get(name, ()))
            current = self.layers.get(name)
            if signature(current.applied if current else ()) == signature(contributions):
                continue
            target = current.target if current else targets[name]
            written = self._rewrite(name, target, contributions)
            stats.layers_touched += 1
            stats.layers_restored += 0 if contributions else 1
            stats.bytes_written += written
            stats.touched.append(name)
        stats.seconds = time.perf_counter() - start
        self.total_layers_touched += stats.layers_touched
        return stats

    def _rewrite(self, name: str, target: TargetLayer, contributions: tuple[Contribution, ...]) -> int:
        module = target.module
        weight: torch.Tensor = module.weight
        state = self.layers.get(name)
        if not contributions:
            if state is None:
                return 0
            return self._restore(name, state)
        if state is None:
            bias = getattr(module, "bias", None)
            state = _LayerState(
                target=target,
                weight_backup=weight.detach().to("cpu", copy=True),
                bias_backup=None if bias is None else bias.detach().to("cpu", copy=True),
                bias_was_none=bias is None,
            )
            self.layers[name] = state
        dtype = compute_dtype(weight)
        # float32 weights are rebuilt in place (pristine copy, then the deltas added into the parameter itself): no
        # working copy is allocated. Other dtypes (fp16/bf16 on CUDA) are rebuilt in float32 and written back once.
        in_place = weight.dtype == dtype and weight.is_contiguous()
        if in_place:
            new_weight = weight.detach()
            new_weight.copy_(state.weight_backup)
        else:
            new_weight = state.weight_backup.to(weight.device, dtype=dtype, copy=True)
        new_bias = None if state.bias_backup is None else state.bias_backup.to(weight.device, dtype=dtype, copy=True)
        failure: LayerPatchError | None = None
        for contribution in contributions:
            try:
                new_bias = self._add_contribution(new_weight, new_bias, contribution)
            except Exception as exc:  # one network's failure must name it
                failure = LayerPatchError(contribution.network, name, exc)
                failure.__cause__ = exc
                break
        # One reduction finds any NaN/Inf (NaN and Inf propagate through a sum) without a full-size bool tensor.
        if failure is None and (not torch.isfinite(new_weight.sum())
                                or (new_bias is not None and not torch.isfinite(new_bias.sum()))):
            failure = LayerPatchError(contributions[-1].network, name,
                                      ValueError("the merged weight has NaN or Inf values"))
        if failure is not None:
            if in_place:  # put back what the layer held before this call
                self._rebuild(new_weight, state)
            if not state.applied:
                del self.layers[name]
            raise failure
        if not in_place:
            weight.copy_(new_weight)
        written = weight.numel() * weight.element_size()
        if new_bias is not None:
            if getattr(module, "bias", None) is None:
                module.bias = torch.nn.Parameter(new_bias.to(weight.dtype), requires_grad=False)
            else:
                module.bias.copy_(new_bias)
            written += new_bias.numel() * weight.element_size()
        state.applied = contributions
        return written

    def _rebuild(self, weight: torch.Tensor, state: _LayerState) -> None:
        """Rewrite `weight` in place as pristine + the contributions the layer held (they applied before)."""
        weight.copy_(state.weight_backup)
        bias = None if state.bias_backup is None else state.bias_backup.to(weight.device, weight.dtype, copy=True)
        for contribution in state.applied:
            bias = self._add_contribution(weight, bias, contribution)

    @staticmethod
    def _add_contribution(weight: torch.Tensor, bias: torch.Tensor | None, c: Contribution) -> torch.Tensor | None:
        """Add one contribution onto the working copies; returns the (possibly new) bias."""
        factors = c.module.low_rank(c.multiplier, c.dyn_dim)
        if factors is not None:
            up, down = factors
            flat = weight.view(weight.shape[0], -1)
            flat.addmm_(up.to(weight.device, weight.dtype), down.to(weight.device, weight.dtype))
            delta_bias = None
        else:
            delta = c.module.calc_delta(weight, c.multiplier, c.dyn_dim, bias)
            if delta.weight is not None:
                weight.add_(delta.weight.to(weight.device, weight.dtype).reshape(weight.shape))
            delta_bias = delta.bias
        if delta_bias is not None:
            delta_bias = delta_bias.to(weight.device, weight.dtype).reshape(-1)
            bias = delta_bias.clone() if bias is None else bias + delta_bias
        return bias

    def _restore(self, name: str, state: _LayerState) -> int:
        module = state.target.module
        module.weight.copy_(state.weight_backup.to(module.weight.device))
        written = module.weight.numel() * module.weight.element_size()
        if state.bias_was_none:
            if getattr(module, "bias", None) is not None:
                module.bias = None
        elif state.bias_backup is not None:
            module.bias.copy_(state.bias_backup.to(module.bias.device))
            written += module.bias.numel() * module.bias.element_size()
        del self.layers[name]
        return written

    @torch.no_grad()
    def restore_all(self) -> PatchStats:
        """Put every layer back to pristine (e.g. before the model is replaced or saved without LoRAs)."""
        return self.apply({}, {})
