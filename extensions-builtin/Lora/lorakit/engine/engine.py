"""The Lora engine: loads LoRA files against the loaded model and keeps the model's weights equal to
pristine + exactly the requested LoRAs.

* `load_network(entry, index)` reads a file once (safetensors memory-mapped), groups its tensors per layer, asks the
  strategy registry for each group's module, resolves each layer key to a model module and checks shapes. Keys that
  match no layer, groups no strategy claims and shape mismatches are recorded on the `Network` (never silently
  dropped); a LoRA made for another architecture is refused with a message saying so.
* `LoraEngine.activate(requests)` turns the requested networks and multipliers into a wanted list of contributions per
  layer and hands it to the `Patcher`, which touches only the layers whose list changed. A network whose delta fails
  on some layer is dropped as a whole and the others are applied again, so the weights are always pristine plus the
  networks that did load.
* Two application methods (`activate(requests, method=...)`, the `lora_method` setting): "native" merges deltas into
  the weights (above); "diffusers" injects diffusers/PEFT adapters applied in the forward pass (`peft_method.py`).
  Under "diffusers", a LoRA using what diffusers cannot do (block weights, `dyn=`, step schedules, LyCORIS algorithms
  other than LoRA/LoCon, Tucker, DoRA) is merged natively instead, with a warning saying why. Under "native", a file
  the native loader cannot place (nothing fits, or keys left unmatched/unsupported) is tried with diffusers and
  applied that way when diffusers places more of its layers, with a warning saying so. Both kinds can be active at
  once; the report's `ActiveNetwork.method` says which ran.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

from ..algorithms.base import Delta, NetworkModule
from ..algorithms.registry import create_module
from ..errors import LoraError
from ..formats import files
from ..formats.family import KNOWN, SdVersion
from ..formats.keys import LayerIndex, TargetLayer, split_key
from ..formats.peft_metadata import pattern_alpha, peft_alphas
from ..formats.sd_version import detect_sd_version
from ..library.registry import NetworkOnDisk, NetworkRegistry
from .patcher import Contribution, LayerPatchError, Patcher, PatchStats
from .peft_method import METHOD_DIFFUSERS, METHOD_NATIVE, METHODS, PeftAdapter, PeftLoadError, PeftMethod, PeftStats

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.sd_model_types import LoadedModel

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
PEFT_PARTS = ("unet", "text_encoder", "text_encoder_2")  # state-dict prefixes of diffusers' LoRA files


class NetworkLoadError(LoraError):
    """A LoRA that cannot be applied to the loaded model; the message says why."""


class NothingFitsError(NetworkLoadError):
    """A LoRA for the loaded model's family of which the native loader placed no layer (the diffusers method may).
    `network` holds what the loader found (unmatched keys, unsupported groups, shape errors)."""

    def __init__(self, message: str, network: Network) -> None:
        super().__init__(message)
        self.network = network


@dataclass
class Network:
    """A LoRA file loaded against one model: its modules by target layer name, and what did not fit."""

    name: str
    on_disk: NetworkOnDisk
    mtime: float
    modules: dict[str, NetworkModule | PaddedInputModule] = field(default_factory=dict)  # target layer name -> module
    targets: dict[str, TargetLayer] = field(default_factory=dict)
    unmatched_keys: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # "key: reason"
    shape_errors: list[str] = field(default_factory=list)  # "key: reason"
    bundle_embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Human-readable summary lines of everything in the file that was not applied."""
        lines = []
        for label, items in (("keys matched no layer of the loaded model", self.unmatched_keys),
                             ("layers no strategy understands", self.unsupported),
                             ("layers with shapes for another model", self.shape_errors)):
            if items:
                examples = ", ".join(items[:MAX_EXAMPLES]) + (", ..." if len(items) > MAX_EXAMPLES else "")
                lines.append(f"{self.name}: {len(items)} {label} (e.g. {examples})")
        return lines


class PaddedInputModule:
    """Applies a module made for a layer with fewer input channels (a 4-channel LoRA on a 9-channel inpainting
    `conv_in`): the delta is computed on the first `in_channels` input channels and zero-padded to the layer's."""

    def __init__(self, inner: NetworkModule, in_channels: int) -> None:
        self.inner = inner
        self.in_channels = in_channels
        self.algorithm = inner.algorithm
        self.rank, self.alpha, self.key = inner.rank, inner.alpha, inner.key

    def low_rank(self, multiplier: float, dyn_dim: int | None = None) -> None:
        return None

    def calc_delta(self, weight: torch.Tensor, multiplier: float, dyn_dim: int | None = None,
                   bias: torch.Tensor | None = None) -> Delta:
        delta = self.inner.calc_delta(weight[:, : self.in_channels].contiguous(), multiplier, dyn_dim, bias)
        if delta.weight is not None:
            padded = torch.zeros(weight.shape, dtype=delta.weight.dtype, device=delta.weight.device)
            padded[:, : self.in_channels] = delta.weight.reshape(padded[:, : self.in_channels].shape)
            delta.weight = padded
        return delta


def group_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict]]:
    """Group file tensors per layer key; `bundle_emb.NAME.*` tensors are returned separately per embedding."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    embeddings: dict[str, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith("bundle_emb."):
            _, emb_name, rest = key.split(".", 2) if key.count(".") >= 2 else (key, key, "")
            embeddings.setdefault(emb_name, {})[rest] = tensor
            continue
        layer, part = split_key(key)
        groups.setdefault(layer, {})[part] = tensor
    return groups, embeddings


def load_network(entry: NetworkOnDisk, index: LayerIndex, name: str | None = None) -> Network:
    """Load `entry` against the model behind `index`. Raises LoraFileError / NetworkLoadError with clear messages."""
    model = index.model
    version = entry.effective_sd_version
    if version in KNOWN and version != model.family:
        raise NetworkLoadError(
            f"{entry.name} is a LoRA for {version}, but the loaded model is {model.family}: not applied"
        )
    tensors = files.load_tensors(entry.filename)
    if version == SdVersion.Unknown and not entry.is_safetensors:
        version = detect_sd_version({}, {k: list(v.shape) for k, v in tensors.items()})
        if version in KNOWN and version != model.family:
            raise NetworkLoadError(
                f"{entry.name} is a LoRA for {version}, but the loaded model is {model.family}: not applied"
            )
    net = Network(name=name or entry.name, on_disk=entry, mtime=os.path.getmtime(entry.filename))
    groups, net.bundle_embeddings = group_tensors(tensors)
    alphas_by_part = {part: peft_alphas(entry.metadata, part) for part in ("", *PEFT_PARTS)}
    for layer_key, parts in groups.items():
        target = index.resolve(layer_key)
        if target is None:
            net.unmatched_keys.append(layer_key)
            continue
        if "." in layer_key and "lora_down.weight" in parts:  # PEFT/diffusers layout
            part_name = layer_key.split(".")[0]
            peft_alpha, peft_pattern = alphas_by_part[part_name if part_name in PEFT_PARTS else ""]
            if "alpha" not in parts and peft_alpha is not None:
                alpha = pattern_alpha(peft_pattern, layer_key)
                alpha = peft_alpha if alpha is None else alpha
                parts = {**parts, "alpha": torch.tensor(alpha)}
            if "dora_scale" in parts:  # PEFT's magnitude is per output row: (out,), or (1, out, 1, 1) for convs
                weight_dim = target.module.weight.dim()
                parts = {**parts, "dora_scale": parts["dora_scale"].reshape(-1, *[1] * (weight_dim - 1))}
        try:
            module = create_module(layer_key, parts)
        except LoraError as exc:
            net.unsupported.append(f"{layer_key}: {exc}")
            continue
        weight = target.module.weight
        try:
            module.validate(weight.shape)
        except LoraError as exc:
            module = _pad_for_inpainting(module, weight.shape, target)
            if module is None:
                net.shape_errors.append(f"{layer_key}: {exc}")
                continue
        if target.name in net.modules:
            net.shape_errors.append(f"{layer_key}: a second group for layer {target.name}")
            continue
        net.modules[target.name] = module
        net.targets[target.name] = target
    if not net.modules:
        detail = "; ".join(net.problems()) or "the file has no layers"
        raise NothingFitsError(f"{entry.name}: nothing in it fits the loaded {model.family} model ({detail})", net)
    for line in net.problems():
        log.warning("Lora %s", line)
    return net


def _pad_for_inpainting(module: NetworkModule, shape: torch.Size, target: TargetLayer) -> PaddedInputModule | None:
    """A 4-input-channel module for a 9-channel conv_in, wrapped to zero-pad; None if that is not the mismatch."""
    if len(shape) != 4 or shape[1] <= 4 or not target.name.endswith("conv_in"):
        return None
    try:
        module.validate(torch.Size([shape[0], 4, shape[2], shape[3]]))
    except LoraError:
        return None
    return PaddedInputModule(module, 4)


class FileVersion(NamedTuple):
    """One version of a LoRA file, from one stat: the key of every per-file cache (engine, diffusers method, API)."""

    filename: str
    mtime: float
    size: int

    @classmethod
    def of(cls, filename: str) -> FileVersion:
        """The version on disk now (raises OSError when the file cannot be stat'ed)."""
        st = os.stat(filename)
        return cls(filename, st.st_mtime, st.st_size)


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
        self._diffusers_only: dict[tuple, Network] = {}
        self.active: list[ActiveNetwork] = []
        self.last_report = ActivationReport()
        self._lock = threading.RLock()

    def set_model(self, model: LoadedModel | None) -> None:
        """Use a newly loaded (pristine) model; nothing of the previous model's state is kept."""
        with self._lock:
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
            self.active = []

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
        if key in self._nothing_fits:
            raise self._nothing_fits[key]
        net = self.networks_in_memory.get(key)
        if net is None:
            try:
                net = load_network(entry, self.index)
            except NothingFitsError as exc:
                self._nothing_fits[key] = exc
                raise
            self.networks_in_memory[key] = net
            while len(self.networks_in_memory) > max(self.memory_limit, 1):
                self.networks_in_memory.popitem(last=False)
        else:
            self.networks_in_memory.move_to_end(key)
        return net

    def activate(self, requests: list[NetworkRequest], method: str = METHOD_NATIVE) -> ActivationReport:
        """Make the model hold exactly `requests` (in order; the same file twice counts twice), each applied with
        `method` ("native" or "diffusers") where it can be (see the module docstring)."""
        if method not in METHODS:
            raise ValueError(f"unknown LoRA method {method!r}; choose one of {', '.join(METHODS)}")
        with self._lock:
            if self.model is None or self.index is None or self.peft is None:
                raise RuntimeError("no model is loaded")
            report = ActivationReport()
            chosen: list[ActiveNetwork] = []
            occurrences: dict[str, int] = {}
            rescanned = False
            for request in requests:
                entry = self.registry.find(request.name)
                if entry is None and not rescanned:  # a file added since the last scan: one rescan per activation
                    self.registry.refresh()
                    rescanned = True
                    entry = self.registry.find(request.name)
                if entry is None:
                    report.not_found.append(request.name)
                    continue
                occurrence = occurrences[entry.filename] = occurrences.get(entry.filename, -1) + 1
                try:
                    active = self._choose(entry, request, method, occurrence, report)
                    self.registry.read_hash(entry)
                except (LoraError, OSError) as exc:
                    report.errors[request.name] = str(exc)
                    log.error("Lora %s not applied: %s", request.name, exc)
                    continue
                chosen.append(active)
            while True:
                native = [a for a in chosen if a.method == METHOD_NATIVE]
                try:
                    report.stats = self.patcher.apply(self._wanted(native), self._targets(native))
                    break
                except LayerPatchError as exc:
                    failed = exc.network
                    report.errors[failed.name] = f"failed on layer {exc.layer}: {exc.cause}"
                    log.error("Lora %s not applied: failed on layer %s: %s", failed.name, exc.layer, exc.cause)
                    chosen = [a for a in chosen if not (a.network is failed and a.method == METHOD_NATIVE)]
            report.peft = self.peft.apply([(a.adapter, a.request.te_multiplier, a.request.unet_multiplier)
                                           for a in chosen if a.adapter is not None])
            report.active = chosen
            self.active = chosen
            self.last_report = report
            return report

    def _choose(self, entry: NetworkOnDisk, request: NetworkRequest, method: str, occurrence: int,
                report: ActivationReport) -> ActiveNetwork:
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
        if request.native_only() is None and (found.unmatched_keys or found.unsupported):
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


def diffusers_cannot(network: Network) -> str | None:
    """What in a natively loaded file diffusers' loader does not apply (LyCORIS algorithms other than LoRA/LoCon,
    Tucker `lora_mid`, DoRA, the legacy weight offset, padded inpainting inputs), or None."""
    modules = list(network.modules.values())
    features = sorted({str(m.algorithm) for m in modules} - {"LoRA"})
    checks = (("Tucker (lora_mid)", lambda m: "lora_mid.weight" in getattr(m, "weights", {})),
              ("DoRA", lambda m: getattr(m, "is_dora", False)),
              ("LyCORIS weight offsets", lambda m: getattr(m, "weight_offset", None) is not None),
              ("a 4-channel conv_in on a 9-channel model", lambda m: isinstance(m, PaddedInputModule)))
    features += [label for label, check in checks if any(check(m) for m in modules)]
    return ", ".join(features) or None
