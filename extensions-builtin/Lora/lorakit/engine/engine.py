"""The Lora engine: loads LoRA files against the loaded model and keeps the model's weights equal to
pristine + exactly the requested LoRAs.

* `loader.load_network(entry, index)` reads a file against the model (see `engine.loader`); the engine caches the
  result per file version (`FileVersion`) and model.
* `LoraEngine.activate(requests)` turns the requested networks and multipliers into a wanted list of contributions per
  layer and hands it to the `Patcher`, which touches only the layers whose list changed. A network whose delta fails
  on some layer is dropped as a whole and the others are applied again, so the weights are always pristine plus the
  networks that did load.
* Two application methods (`activate(requests, method=...)`, the `lora_method` setting): "native" merges deltas into
  the weights (above); "diffusers" injects diffusers/PEFT adapters applied in the forward pass (`engine.peft_method`).
  Under "diffusers", a LoRA using what diffusers cannot do (block weights, `dyn=`, step schedules, LyCORIS algorithms
  other than LoRA/LoCon, Tucker, DoRA) is merged natively instead, with a warning saying why. Under "native", a file
  the native loader cannot place (nothing fits, or keys left unmatched/unsupported) is tried with diffusers and
  applied that way when diffusers places more of its layers, with a warning saying so. Both kinds can be active at
  once; the report's `ActiveNetwork.method` says which ran.
* Failures are contained per requested LoRA: a `LoraError`/`OSError` is reported with its message, any other
  exception (a bug, an unforeseen file) is logged with its traceback and reported naming the LoRA and the exception;
  the other LoRAs apply. A failed rescan, or a failure while patching, never leaves the previous prompt's set merged:
  the model holds pristine weights plus exactly the LoRAs in `report.active`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..algorithms.base import Delta
from ..errors import LoraError
from ..formats import files
from ..formats.files import FileVersion
from ..formats.keys import LayerIndex, TargetLayer
from ..library.registry import NetworkOnDisk, NetworkRegistry
from .loader import Network, NetworkLoadError, NothingFitsError, diffusers_cannot, group_tensors, load_network
from .patcher import Contribution, LayerPatchError, Patcher, PatchStats
from .peft_method import METHOD_DIFFUSERS, METHOD_NATIVE, METHODS, PeftAdapter, PeftLoadError, PeftMethod, PeftStats

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.sd_model_types import LoadedModel

log = logging.getLogger(__name__)

class EngineStartError(LoraError):
    """The engine failed to start for the loaded model (see `LoraEngine.set_model`); the message names the cause."""


@dataclass
class NetworkRequest:
    """One `<lora:...>` after parsing: which file, with which multipliers."""

    name: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None
    # Per-layer multiplier factor (block weights); None = 1 everywhere.
    layer_factor: Callable[[TargetLayer], float] | None = None
    # The weights change during sampling (start=/stop=/keyframes): re-applied per step, so native merge only.
    scheduled: bool = False

    def native_only(self) -> str | None:
        """What in this request only native merge can do (for the warning), or None."""
        features = [label for label, used in (("block weights", self.layer_factor is not None),
                                              ("dyn=", self.dyn_dim is not None),
                                              ("step schedules", self.scheduled)) if used]
        return ", ".join(features) or None


@dataclass
class ActiveNetwork:
    """A network in the current set, as the prompt asked for it, and the method that applies it."""

    request: NetworkRequest
    network: Network
    method: str = METHOD_NATIVE
    adapter: PeftAdapter | None = None  # set when method == "diffusers"


@dataclass
class ActivationReport:
    """Outcome of one activation: what is active, what was not found, what failed (with messages)."""

    active: list[ActiveNetwork] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    stats: PatchStats = field(default_factory=PatchStats)
    peft: PeftStats = field(default_factory=PeftStats)


@dataclass(frozen=True)
class EngineSnapshot:
    """What the engine holds at one moment: the model, the active set (prompt order) and the networks in memory."""

    model: LoadedModel | None
    index: LayerIndex | None
    active: tuple[ActiveNetwork, ...]
    in_memory: tuple[Network, ...]


class LoraEngine:
    """Registry + loaded networks + patcher for the current model. All methods are thread-safe.

    Public read API (for the API, the tools, the cards and the A1111 facade; nothing else reads private state):
    `snapshot()`, `network(entry)` (one file loaded against the model, through the cache and the lock),
    `file_version(entry)`, `pristine_weight(layer)`, `delta_at_pristine(network, layer)`, `layer_changes()`.
    """

    def __init__(self, registry: NetworkRegistry, memory_limit: int = 8) -> None:
        self.registry = registry
        self.memory_limit = memory_limit
        self.model: LoadedModel | None = None
        self.index: LayerIndex | None = None
        self.patcher = Patcher()
        self.networks_in_memory: OrderedDict[tuple, Network] = OrderedDict()
        self.peft: PeftMethod | None = None
        # Per file version: the native loader's "nothing fits" (not retried) and the stand-in Network of a file only
        # diffusers places (name, hash, bundled embeddings for the report and the embeddings).
        self._nothing_fits: dict[tuple, NothingFitsError] = {}
        self._in_use: set[int] = set()  # ids of the networks the active set and the running activation hold
        self._diffusers_only: dict[tuple, Network] = {}
        self.active: list[ActiveNetwork] = []
        self.last_report = ActivationReport()
        self.failure: str | None = None  # why the engine could not start for the loaded model (see set_model)
        self._lock = threading.RLock()

    def set_model(self, model: LoadedModel | None) -> None:
        """Use a newly loaded (pristine) model; nothing of the previous model's state is kept.

        This is the engine's start-up for that model (the host's `model_loaded` callback). If it fails, the failure is
        logged once with its traceback and kept in `failure`: every activation then raises `EngineStartError` with
        that cause (shown under each image), and `GET /sdapi/v1/loaded-loras` answers 503 with it."""
        with self._lock:
            self.failure = None
            try:
                self._start(model)
            except Exception as exc:  # any bug here must reach the user, not turn into "no model is loaded"
                self.failure = f"{type(exc).__name__}: {exc}"
                # `model` stays: the failure belongs to it (no retry, and no second traceback, per generation).
                self.model, self.index, self.peft, self.active = model, None, None, []
                log.exception("the Lora engine failed to start for the loaded model")

    def _start(self, model: LoadedModel | None) -> None:
        if self.peft is not None:
            self.peft.remove_all()
        self.model = model
        self.peft = PeftMethod(model) if model is not None else None
        if self.peft is not None:  # stale PEFT layers out first: the index must hold the model's own modules
            self.peft.unwrap_all()
        self._nothing_fits.clear()
        self._diffusers_only.clear()
        self.index = LayerIndex(model) if model is not None else None
        self.patcher = Patcher(model.pristine if model is not None else None)
        self.networks_in_memory.clear()
        self._in_use = set()
        self.active = []

    def require_started(self) -> None:
        """Raise EngineStartError when the engine failed to start for the loaded model."""
        if self.failure is not None:
            raise EngineStartError(f"the Lora engine failed to start: {self.failure}")

    @staticmethod
    def _file_key(entry: NetworkOnDisk) -> FileVersion:
        """(file, mtime, size): one version of a file, from one stat."""
        return FileVersion.of(entry.filename)

    # ------------------------------------------------------------------------------------ public read API
    def file_version(self, entry: NetworkOnDisk) -> FileVersion:
        """The version of `entry`'s file on disk now: the key the engine caches it under (raises OSError)."""
        return FileVersion.of(entry.filename)

    def snapshot(self) -> EngineSnapshot:
        """The model, the active set and the cached networks, taken under the lock."""
        with self._lock:
            return EngineSnapshot(self.model, self.index, tuple(self.active), tuple(self.networks_in_memory.values()))

    def network(self, entry: NetworkOnDisk) -> Network:
        """`entry` loaded against the current model, from the engine's cache (loaded and cached when absent).
        Raises LoraError subclasses (and OSError) when it cannot be loaded; RuntimeError without a model."""
        with self._lock:
            if self.index is None:
                raise RuntimeError("no model is loaded")
            return self._network(entry)

    def purge_memory(self) -> None:
        """Drop every cached network that is not active."""
        with self._lock:
            keep = {id(active.network) for active in self.active}
            for key in [k for k, net in self.networks_in_memory.items() if id(net) not in keep]:
                del self.networks_in_memory[key]

    @torch.no_grad()
    def pristine_weight(self, layer: str) -> torch.Tensor:
        """W0 of a model layer (by target name): what it holds without any LoRA, whatever is active now."""
        with self._lock:
            if self.index is None:
                raise RuntimeError("no model is loaded")
            if self.patcher.applied(layer):
                return self.patcher.pristine_weight(layer)
            return self.index.layers[layer].module.weight.detach()

    @torch.no_grad()
    def delta_at_pristine(self, network: Network, layer: str, multiplier: float = 1.0) -> Delta:
        """The `Delta` one network's module makes on `layer` computed at the layer's pristine weight (so IA3, OFT,
        BOFT, GLoRA and DoRA, whose deltas depend on the weight, give the same answer whatever else is active)."""
        weight = self.pristine_weight(layer)
        target = network.targets[layer]
        device = target.module.weight.device
        weight = weight.to(device)
        if weight.dtype not in (torch.float32, torch.float64):
            weight = weight.float()
        return network.modules[layer].calc_delta(weight, multiplier)

    def layer_changes(self) -> list[LayerChange]:
        """Every layer the native method has patched: its current module, pristine weight and bias, and what is
        applied to it (for tools that read the merged model back)."""
        with self._lock:
            return [LayerChange(name=name, target=state.target, applied=state.applied,
                                pristine_weight=self.patcher.pristine_weight(name),
                                pristine_bias=None if state.bias_was_none else state.bias_backup,
                                bias_was_none=state.bias_was_none)
                    for name, state in self.patcher.layers.items()]

    def _network(self, entry: NetworkOnDisk) -> Network:
        assert self.index is not None
        key = self._file_key(entry)
        if key in self._nothing_fits:  # a fresh copy: a raised exception would keep the frames it passed through
            raise self._nothing_fits[key].without_tensors()
        net = self.networks_in_memory.get(key)
        if net is None:
            try:
                net = load_network(entry, self.index)
            except NothingFitsError as exc:
                self._nothing_fits[key] = exc.without_tensors()  # kept per file version: no frames, no tensors
                raise self._nothing_fits[key].without_tensors() from None
            self._in_use.add(id(net))
            self.networks_in_memory[key] = net
            self._evict()
        else:
            self.networks_in_memory.move_to_end(key)
            self._in_use.add(id(net))
        return net

    def _evict(self) -> None:
        """Keep at most `memory_limit` networks in memory, least recently used out first, but never one that the
        active set or the activation running now uses: evicting it would load the file again for its next tag
        (500 tags over 10 files then held 500 copies of the same tensors) while the old copy stays referenced."""
        while len(self.networks_in_memory) > max(self.memory_limit, 1):
            victim = next((key for key, net in self.networks_in_memory.items() if id(net) not in self._in_use), None)
            if victim is None:
                return
            del self.networks_in_memory[victim]

    def activate(self, requests: list[NetworkRequest], method: str = METHOD_NATIVE) -> ActivationReport:
        """Make the model hold exactly `requests` (in order; the same file twice counts twice), each applied with
        `method` ("native" or "diffusers") where it can be (see the module docstring)."""
        if method not in METHODS:
            raise ValueError(f"unknown LoRA method {method!r}; choose one of {', '.join(METHODS)}")
        with self._lock:
            self.require_started()
            if self.model is None or self.index is None or self.peft is None:
                raise RuntimeError("no model is loaded")
            report = ActivationReport()
            self._in_use = {id(active.network) for active in self.active}
            chosen = self._choose_all(requests, method, report)
            chosen = self._apply_native(chosen, report)
            try:
                report.peft = self.peft.apply([(a.adapter, a.request.te_multiplier, a.request.unet_multiplier)
                                               for a in chosen if a.adapter is not None])
            except Exception as exc:  # the adapters' state is unknown: none of them stays, the native ones do
                log.exception("diffusers adapters could not be applied")
                failed = [a for a in chosen if a.adapter is not None]
                for a in failed:
                    report.errors[a.request.name] = f"not applied with diffusers: {type(exc).__name__}: {exc}"
                chosen = [a for a in chosen if a.adapter is None]
                try:
                    report.peft = self.peft.apply([])
                except Exception:
                    log.exception("diffusers adapters could not be removed")
            report.active = chosen
            self.active = chosen
            self._in_use = {id(active.network) for active in chosen}
            self._evict()
            self.last_report = report
            return report

    def _apply_native(self, chosen: list[ActiveNetwork], report: ActivationReport) -> list[ActiveNetwork]:
        """Patch the native networks of `chosen`; a network that fails on a layer is dropped (named in the report)
        and the rest applied again. Any other failure restores every layer to pristine and drops every native
        network: the model then holds pristine weights, never a mix of this prompt's and the previous one's."""
        while True:
            native = [a for a in chosen if a.method == METHOD_NATIVE]
            try:
                report.stats = self.patcher.apply(self._wanted(native), self._targets(native))
                return chosen
            except LayerPatchError as exc:
                failed = exc.network
                report.errors[failed.name] = f"failed on layer {exc.layer}: {exc.cause}"
                log.error("Lora %s not applied: failed on layer %s: %s", failed.name, exc.layer, exc.cause)
                chosen = [a for a in chosen if not (a.network is failed and a.method == METHOD_NATIVE)]
            except Exception as exc:
                log.exception("Lora weights could not be patched")
                for a in native:
                    report.errors[a.request.name] = f"not applied: {type(exc).__name__}: {exc}"
                self.patcher.apply({}, {})
                return [a for a in chosen if a.method != METHOD_NATIVE]

    def plan(self, requests: list[NetworkRequest]) -> tuple[ActivationReport, dict[str, tuple[Contribution, ...]],
                                                            dict[str, TargetLayer]]:
        """What `activate(requests)` would merge natively, without touching the model: (report with what was not
        found or failed to load, the contributions wanted per layer, the target of each such layer). For tools that
        stream a checkpoint through `patcher.add_contributions` instead of patching the loaded model."""
        with self._lock:
            self.require_started()
            if self.model is None or self.index is None:
                raise RuntimeError("no model is loaded")
            report = ActivationReport()
            chosen = self._choose_all(requests, METHOD_NATIVE, report, diffusers_fallback=False)
            report.active = chosen
            return report, self._wanted(chosen), self._targets(chosen)

    def _choose_all(self, requests: list[NetworkRequest], method: str, report: ActivationReport,
                    diffusers_fallback: bool = True) -> list[ActiveNetwork]:
        """The network and method for each request, in order; what is missing or fails goes to `report`.
        `diffusers_fallback=False`: native only (a file native merge cannot fully place is merged as far as it goes,
        with its problems as warnings)."""
        chosen: list[ActiveNetwork] = []
        occurrences: dict[str, int] = {}
        rescanned = False
        for request in requests:
            entry = self.registry.find(request.name)
            if entry is None and not rescanned:  # a file added since the last scan: one rescan per activation
                rescanned = True
                try:
                    self.registry.refresh()
                except Exception as exc:  # a failed rescan costs only the names it would have found
                    log.exception("Lora folder rescan failed")
                    report.warnings.append(f"the Lora folders could not be rescanned: {type(exc).__name__}: {exc}")
                entry = self.registry.find(request.name)
            if entry is None:
                report.not_found.append(request.name)
                continue
            occurrence = occurrences[entry.filename] = occurrences.get(entry.filename, -1) + 1
            try:
                active = self._choose(entry, request, method, occurrence, report, diffusers_fallback)
                self.registry.read_hash(entry)
            except (LoraError, OSError) as exc:
                report.errors[request.name] = str(exc)
                log.error("Lora %s not applied: %s", request.name, exc)
                continue
            except Exception as exc:  # a bug or an unforeseen file: this LoRA fails, named; the others apply
                report.errors[request.name] = f"{entry.name}: could not be loaded ({type(exc).__name__}: {exc})"
                log.exception("Lora %s not applied", request.name)
                continue
            chosen.append(active)
        return chosen

    def _choose(self, entry: NetworkOnDisk, request: NetworkRequest, method: str, occurrence: int,
                report: ActivationReport, diffusers_fallback: bool = True) -> ActiveNetwork:
        """The network for `request` and the method that applies it; warnings go to `report`. Raises what makes it
        unusable (LoraFileError, NetworkLoadError, OSError)."""
        try:
            network: Network | None = self._network(entry)
            native_error: NothingFitsError | None = None
        except NothingFitsError as exc:
            network, native_error = None, exc
        if method == METHOD_DIFFUSERS:
            return self._choose_diffusers(entry, request, occurrence, report, network, native_error)
        found = network if network is not None else native_error.network
        # Keys native merge cannot place (not mere shape errors, which diffusers would hit too): does diffusers place
        # more of the file? Not for requests with what only native merge does.
        if diffusers_fallback and request.native_only() is None and (found.unmatched_keys or found.unsupported):
            try:
                adapter = self._adapter(entry, occurrence, at_least=len(found.modules) + 1)
            except PeftLoadError:
                adapter = None
            if adapter is not None:
                report.warnings.append(f"{entry.name}: applied with diffusers ({len(adapter.layers)} layers) because "
                                       f"native merge could not place it: {native_error or '; '.join(found.problems())}")
                report.warnings.extend(adapter.problems())
                return ActiveNetwork(request, network or self._stand_in(entry), METHOD_DIFFUSERS, adapter)
        if network is None:
            raise native_error
        report.warnings.extend(network.problems())
        return ActiveNetwork(request, network)

    def _choose_diffusers(self, entry: NetworkOnDisk, request: NetworkRequest, occurrence: int,
                          report: ActivationReport, network: Network | None,
                          native_error: NothingFitsError | None) -> ActiveNetwork:
        """Method "diffusers": the adapter, or native merge (with the reason) for what diffusers cannot do or places
        fewer layers of."""
        reason = request.native_only() or (diffusers_cannot(network) if network is not None else None)
        if reason is None:
            try:
                adapter = self._adapter(entry, occurrence, at_least=len(network.modules) if network else 1)
            except PeftLoadError as exc:
                reason = str(exc)
            else:
                report.warnings.extend(adapter.problems())
                return ActiveNetwork(request, network or self._stand_in(entry), METHOD_DIFFUSERS, adapter)
        else:
            reason = f"diffusers cannot apply {reason}"
        if network is None:
            raise NetworkLoadError(f"{native_error}; {reason}")
        report.warnings.append(f"{entry.name}: applied with native merge: {reason}")
        report.warnings.extend(network.problems())
        return ActiveNetwork(request, network)

    def _adapter(self, entry: NetworkOnDisk, occurrence: int, at_least: int = 1) -> PeftAdapter:
        """The diffusers adapter of `entry` (injected, or cached). PeftLoadError when diffusers cannot load it or
        places fewer than `at_least` layers (outcomes are remembered per file version: never tried twice)."""
        assert self.peft is not None
        file_key = self._file_key(entry)
        placed = self.peft.outcomes.get(file_key)
        adapter = None
        if not (isinstance(placed, int) and placed < at_least):
            adapter = self.peft.load((*file_key, occurrence), entry.name,
                                     lambda: files.load_tensors(entry.filename), entry.metadata)
            placed = len(adapter.layers)
        if placed < at_least:
            if adapter is not None:
                self.peft.discard(adapter)
            raise PeftLoadError(f"diffusers places fewer of its layers ({placed}) than native merge ({at_least})")
        return adapter

    def _stand_in(self, entry: NetworkOnDisk) -> Network:
        """A Network without native modules for a file only diffusers places (name, file, bundled embeddings)."""
        key = self._file_key(entry)
        network = self._diffusers_only.get(key)
        if network is None:
            _, embeddings = group_tensors(files.load_tensors(entry.filename))
            network = Network(name=entry.name, on_disk=entry, mtime=key[1], bundle_embeddings=embeddings)
            self._diffusers_only[key] = network
        return network

    @staticmethod
    def _targets(chosen: list[ActiveNetwork]) -> dict[str, TargetLayer]:
        targets: dict[str, TargetLayer] = {}
        for active in chosen:
            targets.update(active.network.targets)
        return targets

    @staticmethod
    def _wanted(chosen: list[ActiveNetwork]) -> dict[str, tuple[Contribution, ...]]:
        wanted: dict[str, list[Contribution]] = {}
        for active in chosen:
            req = active.request
            for layer, module in active.network.modules.items():
                target = active.network.targets[layer]
                multiplier = req.te_multiplier if target.is_text_encoder else req.unet_multiplier
                if req.layer_factor is not None:
                    multiplier *= req.layer_factor(target)
                if multiplier == 0:
                    continue
                wanted.setdefault(layer, []).append(Contribution(active.network, module, multiplier, req.dyn_dim))
        return {layer: tuple(items) for layer, items in wanted.items()}

    def deactivate_all(self) -> ActivationReport:
        """Remove every LoRA: the model's weights become bitwise pristine."""
        return self.activate([])


@dataclass(frozen=True)
class LayerChange:
    """One patched layer, read through `LoraEngine.layer_changes()`."""

    name: str
    target: TargetLayer
    applied: tuple[Contribution, ...]
    pristine_weight: torch.Tensor
    pristine_bias: torch.Tensor | None
    bias_was_none: bool


__all__ = ["ActivationReport", "ActiveNetwork", "EngineSnapshot", "FileVersion", "LayerChange", "LoraEngine",
           "Network", "NetworkLoadError", "NetworkRequest", "NothingFitsError", "diffusers_cannot", "load_network"]
