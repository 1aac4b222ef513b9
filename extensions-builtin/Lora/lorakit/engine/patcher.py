"""The patcher: writes `W = W0 + sum_i delta_i` into exactly the layers whose wanted contributions changed.

No monkey-patching: weights are merged eagerly into the modules' own parameters and stay merged between generations.
A layer is always rebuilt from its pristine weight W0 (a bitwise copy, never by subtracting a delta), and W0 comes from
one of two places, chosen on the layer's first use:
* the checkpoint file itself, memory-mapped (`modules.pristine_weights`), when the model was loaded from
  `.safetensors` and the file's tensor equals the weight bit for bit: no copy is held at all. The loader established
  that identity (and max|W0|) while it read the file, so the first use reads nothing but a 64-value sample
  (`PristineWeights.identical`); only a weight written since the load costs a full comparison;
* otherwise a backup copy in the weight's dtype on the CPU, dropped when no network wants the layer any more.
Untouched layers never have a backup. Biases (tiny) are always copied. First apply therefore costs the deltas alone
(the layer holds W0 already), a switch one copy of W0 from the file more.

Deltas are computed in `tensor_math.compute_dtype` (float32; float64 weights in float64; bfloat16/float32 stay as
they are on CUDA) on the weight's device, the same dtype the strategies compute in. float32 weights
are rebuilt in place (pristine copied in, deltas added with `addmm_`), other dtypes in a float32 working copy written
back once. NaN/Inf/overflow guard without an extra pass where it can be proven unnecessary: for low-rank deltas
|W0 + sum_i up_i down_i| <= max|W0| + sum_i r_i max|up_i| max|down_i|; when that bound (from the small factors and
max|W0| measured once) is within `algorithms.weight_checks`' limit the result is finite and sane; otherwise (or for
other algorithms) one reduction over the merged weight checks it (NaN/Inf, or absurdly large: a black image). Counters (`PatchStats`) say what each
call did.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch

from ..algorithms import weight_checks
from ..algorithms.base import NetworkModule
from ..algorithms.tensor_math import compute_dtype
from ..errors import LoraError
from ..formats.keys import TargetLayer

if TYPE_CHECKING:
    from modules.pristine_weights import PristineWeights


class NamedNetwork(Protocol):
    """What the patcher needs of a network: a name for messages (identity decides equality)."""

    name: str


@dataclass(frozen=True, eq=False)
class Contribution:
    """One network's module on one layer, with its multiplier. Equality: same module object, same numbers."""

    network: NamedNetwork  # the loaded network (identity matters, not value)
    module: NetworkModule
    multiplier: float
    dyn_dim: int | None = None

    def signature(self) -> tuple[int, int, float, int | None]:
        return (id(self.network), id(self.module), float(self.multiplier), self.dyn_dim)


def signature(contributions: tuple[Contribution, ...]) -> tuple[tuple[int, int, float, int | None], ...]:
    return tuple(c.signature() for c in contributions)


class PristineUnavailableError(LoraError):
    """A layer's pristine weight cannot be read back (its checkpoint file was rewritten in place while loaded)."""


class LayerPatchError(LoraError):
    """Computing one network's delta for one layer failed; the layer was left as it was."""

    def __init__(self, network: NamedNetwork, layer: str, cause: BaseException) -> None:
        super().__init__(f"{network.name}: layer {layer}: {cause}")
        self.network = network
        self.layer = layer
        self.cause = cause


@dataclass
class PatchStats:
    """What one `apply` did: layers rewritten (patched or restored), bytes written into weights, full reads of a
    pristine weight (a copy of W0 into the layer, or a full comparison of the weight with its file tensor), wall time."""

    layers_touched: int = 0
    layers_restored: int = 0
    bytes_written: int = 0
    pristine_reads: int = 0
    seconds: float = 0.0
    touched: list[str] = field(default_factory=list)


@dataclass
class _LayerState:
    target: TargetLayer
    weight_backup: torch.Tensor | None  # None: W0 is read back from the checkpoint file
    bias_backup: torch.Tensor | None
    bias_was_none: bool
    pristine_amax: float  # max |W0|, for the overflow bound
    applied: tuple = ()


def max_abs(tensor: torch.Tensor) -> float:
    """max |x| over a tensor in one pass without a temporary (NaN if it holds a NaN; 0 for an empty tensor)."""
    if tensor.numel() == 0:
        return 0.0
    low, high = torch.aminmax(tensor)
    return float(torch.maximum(-low, high))


class Patcher:
    """Per-model patch state. `apply(wanted)` makes every layer hold pristine + exactly its wanted contributions."""

    def __init__(self, pristine: PristineWeights | None = None) -> None:
        """`pristine`: the model's `PristineWeights` (W0 read back from its checkpoint file), or None (copies)."""
        self.pristine = pristine
        self.layers: dict[str, _LayerState] = {}
        self.last_stats = PatchStats()
        self.total_layers_touched = 0
        self.pristine_reads = 0  # full reads of W0 so far (see PatchStats.pristine_reads)

    @property
    def backup_bytes(self) -> int:
        """Bytes held in backups (only layers that a network touches have one)."""
        total = 0
        for state in self.layers.values():
            if state.weight_backup is not None:
                total += state.weight_backup.numel() * state.weight_backup.element_size()
            if state.bias_backup is not None:
                total += state.bias_backup.numel() * state.bias_backup.element_size()
        return total

    @property
    def file_backed_layers(self) -> int:
        """Touched layers whose pristine weight is read back from the checkpoint file (no copy held)."""
        return sum(1 for state in self.layers.values() if state.weight_backup is None)

    def applied(self, layer: str) -> tuple[Contribution, ...]:
        state = self.layers.get(layer)
        return state.applied if state else ()

    @torch.no_grad()
    def apply(self, wanted: Mapping[str, tuple[Contribution, ...]], targets: Mapping[str, TargetLayer]) -> PatchStats:
        """Rewrite every layer whose wanted contributions differ from what it holds; others are not touched.

        `wanted` maps layer names to contributions in order; layers absent from it want nothing (restored).
        Raises `LayerPatchError` for the first contribution that fails (its layer is left pristine, with no state);
        layers rewritten before stay consistent.
        """
        start = time.perf_counter()
        reads = self.pristine_reads
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
        stats.pristine_reads = self.pristine_reads - reads
        self.total_layers_touched += stats.layers_touched
        return stats

    def _new_state(self, name: str, target: TargetLayer) -> _LayerState:
        """First use of a layer: W0 from the checkpoint file when it is bitwise the weight, else a CPU copy.

        The identity recorded at load answers without reading the weight; otherwise one full comparison decides."""
        module = target.module
        weight = module.weight.detach()
        param = f"{name}.weight"
        amax = self.pristine.identical(param, weight) if self.pristine is not None else None
        from_file = amax is not None
        if not from_file and self.pristine is not None:
            view = self.pristine.view(param)
            self.pristine_reads += view is not None
            from_file = view is not None and torch.equal(weight, view.to(weight.device, weight.dtype))
        if amax is None:
            amax = max_abs(weight)
        if from_file:
            self.pristine.forget_identity(param)  # the weight is about to change
        bias = getattr(module, "bias", None)
        return _LayerState(
            target=target,
            weight_backup=None if from_file else weight.to("cpu", copy=True),
            bias_backup=None if bias is None else bias.detach().to("cpu", copy=True),
            bias_was_none=bias is None,
            pristine_amax=amax,
        )

    def pristine_weight(self, name: str) -> torch.Tensor:
        """W0 of a touched layer (read-only: its backup copy, or a CPU view of the checkpoint file)."""
        return self._pristine_weight(name, self.layers[name])

    def _pristine_weight(self, name: str, state: _LayerState) -> torch.Tensor:
        """W0 of a layer: its backup copy, or a view of the checkpoint file (counted as a read of W0)."""
        self.pristine_reads += 1
        if state.weight_backup is not None:
            return state.weight_backup
        view = self.pristine.view(f"{name}.weight") if self.pristine is not None else None
        if view is None:
            raise PristineUnavailableError(
                f"{name}: the checkpoint file was changed on disk while loaded, so the layer's original weight cannot "
                "be read back; reload the checkpoint")
        return view

    def _rewrite(self, name: str, target: TargetLayer, contributions: tuple[Contribution, ...]) -> int:
        module = target.module
        weight: torch.Tensor = module.weight
        state = self.layers.get(name)
        if not contributions:
            if state is None:
                return 0
            return self._restore(name, state)
        if state is None:
            state = self._new_state(name, target)
            self.layers[name] = state
        dtype = compute_dtype(weight)
        # float32 weights are rebuilt in place (pristine copied in, then the deltas added into the parameter itself):
        # no working copy. Other dtypes (fp16/bf16 on CUDA) are rebuilt in float32 and written back once.
        # A layer with nothing applied holds W0 itself (checked or copied just now): nothing needs reading back.
        in_place = weight.dtype == dtype and weight.is_contiguous()
        holds_pristine = not state.applied
        if in_place:
            new_weight = weight.detach()
            if not holds_pristine:
                new_weight.copy_(self._pristine_weight(name, state))
        else:
            source = weight.detach() if holds_pristine else self._pristine_weight(name, state)
            new_weight = source.to(weight.device, dtype=dtype, copy=True)
        new_bias = None if state.bias_backup is None else state.bias_backup.to(weight.device, dtype=dtype, copy=True)
        try:
            new_bias = add_contributions(name, new_weight, new_bias, contributions, state.pristine_amax, weight.dtype)
        except LayerPatchError:
            # Back to pristine without running any network's code again; the engine drops the failing network and
            # applies the others afresh.
            self._restore(name, state)
            raise
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

    def _restore(self, name: str, state: _LayerState) -> int:
        module = state.target.module
        module.weight.copy_(self._pristine_weight(name, state))
        if state.weight_backup is None and self.pristine is not None:  # bitwise the file again, by this very copy
            self.pristine.mark_identical(f"{name}.weight", module.weight.detach(), state.pristine_amax)
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
def add_contributions(name: str, weight: torch.Tensor, bias: torch.Tensor | None,
                      contributions: tuple[Contribution, ...], pristine_amax: float,
                      target_dtype: torch.dtype) -> torch.Tensor | None:
    """Add `contributions` in order onto a working weight (in its compute dtype, modified in place) and bias; return
    the (possibly new) bias. The result must fit `target_dtype` (the dtype it is stored in): a NaN, Inf or overflow
    raises LayerPatchError naming the contribution that caused it, as does any error of a network's own code.
    `pristine_amax` = max|W0| starts the overflow bound (see the module docstring). The patcher and the merge tool
    (which streams a checkpoint through it tensor by tensor) share this one definition of a merged layer."""
    bound = pristine_amax
    for contribution in contributions:
        try:
            bias, delta_bound = _add_contribution(weight, bias, contribution)
        except Exception as exc:  # one network's failure must name it
            raise LayerPatchError(contribution.network, name, exc) from exc
        bound += delta_bound
        problem = _merged_problem(weight, bias, bound, pristine_amax, target_dtype)
        if problem is not None:  # blame the one that overflowed (or grew absurdly large)
            raise LayerPatchError(contribution.network, name, ValueError(problem))
    return bias


def _merged_problem(weight: torch.Tensor, bias: torch.Tensor | None, bound: float, pristine_amax: float,
                    dtype: torch.dtype) -> str | None:
    """Why the merged weight (and bias) cannot stay (`weight_checks.merged_problem`: NaN/Inf, does not fit `dtype`,
    or absurdly large), or None: by the bound when it proves it, else by one reduction over the weight. NaN
    anywhere makes every comparison false."""
    if bias is not None and not max_abs(bias) <= torch.finfo(dtype).max:
        return "the merged bias has NaN or Inf values"
    if bound <= pristine_amax + weight_checks.delta_limit(pristine_amax):
        return None
    return weight_checks.merged_problem(max_abs(weight), pristine_amax, dtype)


def _add_contribution(weight: torch.Tensor, bias: torch.Tensor | None,
                      c: Contribution) -> tuple[torch.Tensor | None, float]:
    """Add one contribution onto the working copies; returns the (possibly new) bias and a bound on max|delta|
    (inf when the delta is not low-rank: the caller then checks the merged weight itself)."""
    factors = c.module.low_rank(c.multiplier, c.dyn_dim)
    if factors is not None:
        up, down = factors
        up = up.to(weight.device, weight.dtype)
        down = down.to(weight.device, weight.dtype)
        flat = weight.view(weight.shape[0], -1)
        flat.addmm_(up, down)
        bound = max_abs(up) * max_abs(down) * up.shape[1]
        delta_bias = None
    else:
        delta = c.module.calc_delta(weight, c.multiplier, c.dyn_dim, bias)
        if delta.weight is not None:
            weight.add_(delta.weight.to(weight.device, weight.dtype).reshape(weight.shape))
        delta_bias = delta.bias
        bound = math.inf
    if delta_bias is not None:
        delta_bias = delta_bias.to(weight.device, weight.dtype).reshape(-1)
        bias = delta_bias.clone() if bias is None else bias + delta_bias
    return bias, bound
