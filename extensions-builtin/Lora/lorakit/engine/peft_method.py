"""The second LoRA application method, "diffusers": LoRAs as diffusers/PEFT adapters, unmerged, added in the forward
pass (SD.Next's diffusers LoRA method), beside the engine's own "native merge".

One `PeftMethod` per loaded model holds the adapters injected into its UNet and text encoders:

* `load(...)` converts a file's state dict with diffusers' own converters (`lora_state_dict` of the SD/SDXL loader
  mixins: kohya SD1/SD2/SDXL, SGM block names remapped with the UNet's config, PEFT/diffusers `lora_A`/`lora_B`, the
  older `.lora.down`, `lora_linear_layer` and attention-processor forms) and injects it with `load_lora_into_unet` /
  `load_lora_into_text_encoder`. The returned `PeftAdapter` says which layers diffusers placed (a PEFT layer holds
  the adapter) out of how many the converted file asked for. Injected adapters are cached: the same file version
  is never converted twice while it stays in use.
* `apply([(adapter, te, unet), ...])` makes exactly those adapters active, with the text-encoder multiplier on the
  text encoders and the UNet multiplier on the UNet (`set_adapters`), deletes every other adapter, and unwraps the
  PEFT layers of a part once it holds no adapter, so that with none left the model's `state_dict` has its pristine
  keys and (untouched) tensors again. The same set with the same weights again does nothing.

PEFT wraps each target `Linear`/`Conv2d` in a layer whose `base_layer` is the original module object. The native
patcher keeps writing into those original objects (its targets were indexed before any wrapping), so both methods
can be active at once: output = base layer with the native deltas merged + the PEFT adapters' forward terms.

What diffusers cannot do stays with native merge (the engine decides, see `engine.engine.LoraEngine.activate`): block
weights, `dyn=`, step schedules, LyCORIS algorithms other than LoRA/LoCon, Tucker `lora_mid`, DoRA, and the legacy
LyCORIS weight offset.

Infotext `Lora method` (written by `prompt.extra_network`, read back when an infotext is pasted): the method chosen in
Settings, then the LoRAs that ran the other way, e.g. `Lora method: diffusers` (all through diffusers),
`Lora method: "native, diffusers: name1"` (native chosen, `name1` fell back to diffusers) or
`Lora method: "diffusers, native: name2"` (diffusers chosen, `name2` needed native merge). Nothing is written when
native merge was chosen and used for every LoRA (A1111's infotext). Pasting brings the first word back as the
`lora_method` setting (an override setting, as A1111 does), and an infotext with `Lora hashes` but no `Lora method`
brings back native merge.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..algorithms import weight_checks
from ..errors import LoraError
from ..formats.peft_metadata import AdapterMetadataError, adapter_metadata, pattern_alpha, peft_alphas

if TYPE_CHECKING:
    from modules.sd_model_types import LoadedModel

log = logging.getLogger(__name__)

METHOD_NATIVE = "native"
METHOD_DIFFUSERS = "diffusers"
METHODS = (METHOD_NATIVE, METHOD_DIFFUSERS)
# Settings choices (option `lora_method`) -> engine method names.
OPTION_CHOICES = {"native merge": METHOD_NATIVE, "diffusers": METHOD_DIFFUSERS}
OPTION_DEFAULT = "native merge"
INFOTEXT_KEY = "Lora method"

# Tensor-name endings of the "down" matrix of one layer in every layout diffusers reads: one per layer.
_DOWN_SUFFIXES = ("lora_A.weight", "lora.down.weight", "lora_linear_layer.down.weight", "_lora.down.weight",
                  "lora_down.weight")
_PREFIXES = ("unet", "text_encoder", "text_encoder_2")


class PeftLoadError(LoraError):
    """diffusers could not convert or inject a LoRA file; the message says why."""


def unavailable_reason() -> str | None:
    """Why the diffusers method cannot run in this environment (None when it can).

    Only looks the packages up (`importlib.util.find_spec`), imports nothing: the native method never imports what
    this method needs. A package that is found but fails to import is reported when the method is first used."""
    missing = [name for name in ("peft", "diffusers") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"the diffusers LoRA method needs the package{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}, not installed here (it comes with requirements.txt)")
    return None


@functools.cache
def start_failure() -> str | None:
    """Why the diffusers method cannot run (`unavailable_reason`, or the error importing its packages), or None.
    Imports peft and diffusers' LoRA loaders: call it only when the method is about to be used."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    try:
        for module in ("peft.tuners.tuners_utils", "diffusers.loaders.lora_pipeline"):
            importlib.import_module(module)
    except Exception as exc:  # a broken install raises anything; the message is what the user needs
        return f"the diffusers LoRA method could not start: {type(exc).__name__}: {exc}"
    return None


def _peft_imported() -> bool:
    """Whether peft has been imported in this process: before that, no model can hold a PEFT layer."""
    return sys.modules.get("peft") is not None


@dataclass
class PeftAdapter:
    """One LoRA file injected as a PEFT adapter.

    `name`: the PEFT adapter name; `key`: (filename, mtime, size, occurrence); `layers`: the layers holding it, named
    as the engine's targets ("unet.<path>", "text_encoders.<i>.<path>"); `parts`: "unet" / "text_encoders.<i>";
    `requested`: layers the converted file asks for.
    """

    name: str
    key: tuple
    label: str
    layers: list[str] = field(default_factory=list)
    parts: set[str] = field(default_factory=set)
    requested: int = 0

    def problems(self) -> list[str]:
        """Human-readable lines for layers diffusers did not place (empty when it placed them all)."""
        missing = self.requested - len(self.layers)
        if missing <= 0:
            return []
        return [f"{self.label}: {missing} of {self.requested} layers could not be placed by diffusers"]


@dataclass
class PeftStats:
    """What one `PeftMethod.apply` did: adapters injected since the last apply, removed, weights set, wall time."""

    injected: int = 0
    removed: int = 0
    weights_set: bool = False
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.injected or self.removed or self.weights_set)


def method_from_option(value: Any) -> str:
    """The engine method ("native" / "diffusers") for a `lora_method` option value; unknown values mean native."""
    method = OPTION_CHOICES.get(str(value), str(value))
    return method if method in METHODS else METHOD_NATIVE


def infotext_value(method: str, used: list[tuple[str, str]], previous: str | None = None) -> str | None:
    """The `Lora method` value for LoRAs `used` as (infotext name, method) under the chosen `method` (see the module
    docstring); `previous` (the first pass's value, for the hires pass) keeps its exceptions. None: write nothing."""
    other = METHOD_DIFFUSERS if method == METHOD_NATIVE else METHOD_NATIVE
    parsed = parse_infotext_value(previous) if previous else None
    exceptions = list(parsed[1]) if parsed and parsed[0] == method else []
    exceptions += [name for name, used_method in used if used_method != method]
    exceptions = list(dict.fromkeys(exceptions))
    if not used and not parsed:
        return None
    if method == METHOD_NATIVE and not exceptions:
        return None
    return method if not exceptions else f"{method}, {other}: {', '.join(exceptions)}"


def parse_infotext_value(text: Any) -> tuple[str, list[str]] | None:
    """`"native, diffusers: a, b"` -> ("native", ["a", "b"]); `"diffusers"` -> ("diffusers", []); None if unknown."""
    head, _, rest = str(text or "").strip().partition(",")
    method = head.strip().lower()
    if method not in METHODS:
        return None
    _, _, names = rest.partition(":")
    return method, [name.strip() for name in names.split(",") if name.strip()]


def option_from_infotext(text: Any) -> str | None:
    """The `lora_method` option value a pasted `Lora method` brings back, or None when the text names no method."""
    parsed = parse_infotext_value(text)
    if parsed is None:
        return None
    return next(option for option, method in OPTION_CHOICES.items() if method == parsed[0])


def _is_prefixed(metadata: dict[str, Any] | None) -> bool:
    """True for the form diffusers writes (`unet.r`, `text_encoder.lora_alpha`, ...)."""
    return bool(metadata) and any(str(key).split(".")[0] in _PREFIXES and "." in str(key) for key in metadata)


def _bake_alphas(state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """Fold PEFT-layout alphas that diffusers would not read (`<layer>.alpha` tensors, or an unprefixed
    `lora_adapter_metadata` with `lora_alpha`/`alpha_pattern`) into `lora_B` as alpha / rank, dropping the alpha
    tensors; diffusers then derives alpha = rank (scale 1) from the shapes, so the product is the file's."""
    alphas = {key[: -len(".alpha")]: float(value.float().item()) for key, value in state_dict.items()
              if key.endswith(".alpha") and value.numel() == 1}
    default = pattern = None
    if metadata and not _is_prefixed(metadata):
        default = metadata.get("lora_alpha")
        pattern = {str(k): float(v) for k, v in (metadata.get("alpha_pattern") or {}).items()}
    if not alphas and default is None and not pattern:
        return state_dict
    baked: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.endswith(".alpha") and key[: -len(".alpha")] in alphas:
            continue
        if key.endswith(".lora_B.weight") and tensor.dim() >= 2:
            layer = key[: -len(".lora_B.weight")]
            alpha = alphas.get(layer)
            if alpha is None and pattern:
                alpha = pattern_alpha(pattern, layer)
            if alpha is None and default is not None:
                alpha = float(default)
            if alpha:
                tensor = tensor * (alpha / tensor.shape[1])
        baked[key] = tensor
    return baked


def convert_state_dict(model: Any, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
                       ) -> tuple[dict[str, torch.Tensor], dict[str, float] | None, dict[str, Any] | None]:
    """(state dict, network alphas, adapter metadata) as diffusers' loader wants them, converted by diffusers'
    `lora_state_dict` for the model's family. Raises PeftLoadError when diffusers cannot convert the file."""
    from diffusers.loaders.lora_pipeline import (  # noqa: PLC0415 - diffusers' loaders are heavy to import
        StableDiffusionLoraLoaderMixin,
        StableDiffusionXLLoraLoaderMixin,
    )

    state = {key: value for key, value in tensors.items() if not key.startswith("bundle_emb.")}
    if any(key.endswith("dora_scale") for key in state):
        raise PeftLoadError("diffusers drops kohya DoRA (dora_scale) parts")
    loader = StableDiffusionXLLoraLoaderMixin if model.is_sdxl else StableDiffusionLoraLoaderMixin
    try:
        state, network_alphas = loader.lora_state_dict(state, unet_config=model.unet.config)
    except (ValueError, KeyError, IndexError, RuntimeError) as exc:
        raise PeftLoadError(f"diffusers cannot convert it: {str(exc).strip().splitlines()[0][:300]}") from exc
    meta = adapter_metadata(metadata)
    try:  # the alphas diffusers would use from the metadata: finite numbers, or the file is refused
        peft_alphas(metadata)
        peft_alphas(metadata, "unet")
        peft_alphas(metadata, "text_encoder")
    except AdapterMetadataError as exc:
        raise PeftLoadError(str(exc)) from None
    if not network_alphas:
        network_alphas = None
        state = _bake_alphas(state, meta)
        meta = meta if _is_prefixed(meta) else None
    else:
        meta = None
    check_finite(state, network_alphas)
    return state, network_alphas, meta


def check_finite(state: dict[str, torch.Tensor], network_alphas: dict[str, float] | None = None) -> None:
    """Refuse what native merge refuses (`algorithms.weight_checks`, which the patcher applies to each merged
    weight): NaN/Inf in any tensor or alpha, or factors so large that a delta would turn the image black. diffusers
    would load them and the images would be NaN. The bound per delta entry is the product of the largest down- and
    up-factor Frobenius norms times the largest alpha over the smallest rank (a scale of at least 1), in float64."""
    down = up = 0.0
    alpha = 1.0
    rank = math.inf
    for name, value in (network_alphas or {}).items():
        problem = weight_checks.scalar_problem(f"alpha of {name}", value)
        if problem is not None:
            raise PeftLoadError(problem)
        alpha = max(alpha, abs(float(value)))
    for key, tensor in state.items():
        if not tensor.is_floating_point():
            continue
        norm = float(torch.linalg.vector_norm(tensor.detach(), dtype=torch.float64))
        if not math.isfinite(norm):
            raise PeftLoadError(f"{key} has NaN or Inf values")
        if key.endswith("alpha"):
            alpha = max(alpha, norm)
        elif key.endswith(_DOWN_SUFFIXES):
            down = max(down, norm)
            rank = min(rank, tensor.shape[0]) if tensor.dim() else rank
        else:
            up = max(up, norm)
    scale = max(1.0, alpha / rank) if math.isfinite(rank) and rank > 0 else alpha
    problem = weight_checks.bound_problem(down * up * scale)
    if problem is not None:
        raise PeftLoadError(problem)


def count_layers(state_dict: dict[str, torch.Tensor]) -> int:
    """Layers a converted state dict asks for (one "down" matrix each)."""
    return sum(1 for key in state_dict if key.endswith(_DOWN_SUFFIXES))


@contextlib.contextmanager
def _quiet_loaders() -> Iterator[None]:
    """No per-adapter "Loading weights" progress bar from transformers, and no warning from peft that a model holds
    several adapters (which is what this method does) while an adapter is injected."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():  # several adapters in one model is what this method does
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class PeftMethod:
    """The PEFT adapters of one loaded model (see the module docstring). Not thread-safe: the engine locks."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.adapters: dict[tuple, PeftAdapter] = {}
        # file key -> layers diffusers placed, or the message of why it could not load the file (never retried).
        self.outcomes: dict[tuple, int | str] = {}
        self.last_stats = PeftStats()
        self._signature: tuple | None = ()
        self._counter = 0
        self._injected_since_apply = 0

    def parts(self) -> list[tuple[str, str, torch.nn.Module]]:
        """(engine name, diffusers state-dict prefix, module) of the UNet and each text encoder."""
        found = [("unet", "unet", self.model.unet)]
        for index, encoder in enumerate(self.model.text_encoders):
            found.append((f"text_encoders.{index}", "text_encoder" if index == 0 else f"text_encoder_{index + 1}",
                          encoder))
        return found

    def load(self, key: tuple, label: str, tensors: Any, metadata: dict[str, Any]) -> PeftAdapter:
        """The adapter for `key` = (filename, mtime, size, occurrence), injected now unless it already is.

        `tensors`: the file's tensors, or a callable returning them (called only when the adapter is not cached).
        Raises PeftLoadError (also, without retrying, for a file version that failed before)."""
        adapter = self.adapters.get(key)
        if adapter is not None:
            return adapter
        failure = start_failure()
        if failure is not None:
            raise PeftLoadError(failure)
        outcome = self.outcomes.get(key[:3])
        if isinstance(outcome, str):
            raise PeftLoadError(outcome)
        try:
            state, network_alphas, meta = convert_state_dict(self.model, tensors() if callable(tensors) else tensors,
                                                             metadata)
        except PeftLoadError as exc:
            self.outcomes[key[:3]] = str(exc)
            raise
        self._counter += 1
        adapter = PeftAdapter(name=f"webuilora{self._counter}", key=key, label=label, requested=count_layers(state))
        try:
            with _quiet_loaders(), torch.no_grad():
                self._inject(adapter.name, state, network_alphas, meta)
        except Exception as exc:  # diffusers/peft/transformers raise many types; the message is what matters
            self._delete(adapter.name)
            self._unwrap_unused()
            message = f"diffusers could not load it: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
            self.outcomes[key[:3]] = message
            raise PeftLoadError(message) from exc
        self._scan(adapter)
        if not adapter.layers:
            self._delete(adapter.name)
            self._unwrap_unused()
            message = "diffusers placed no layer of it"
            self.outcomes[key[:3]] = message
            raise PeftLoadError(message)
        self.outcomes[key[:3]] = len(adapter.layers)
        self.adapters[key] = adapter
        self._injected_since_apply += 1
        self._signature = None  # the new adapter's weights are set by the next apply
        log.info("Lora %s: injected as diffusers adapter %s (%d layers)", label, adapter.name, len(adapter.layers))
        return adapter

    def _inject(self, name: str, state: dict[str, torch.Tensor], network_alphas: dict[str, float] | None,
                meta: dict[str, Any] | None) -> None:
        from diffusers.loaders.lora_pipeline import (  # noqa: PLC0415
            StableDiffusionLoraLoaderMixin,
            StableDiffusionXLLoraLoaderMixin,
        )

        loader = StableDiffusionXLLoraLoaderMixin if self.model.is_sdxl else StableDiffusionLoraLoaderMixin
        for part, prefix, module in self.parts():
            if not any(key.startswith(prefix + ".") for key in state):
                continue
            part_meta = meta if meta and any(str(k).startswith(prefix + ".") for k in meta) else None
            alphas = network_alphas if part_meta is None else None
            if part == "unet":
                loader.load_lora_into_unet(state, alphas, module, adapter_name=name, metadata=part_meta)
            else:
                loader.load_lora_into_text_encoder(state, alphas, module, prefix=prefix, adapter_name=name,
                                                   metadata=part_meta)

    def _scan(self, adapter: PeftAdapter) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

        for part, _, module in self.parts():
            for path, layer in module.named_modules():
                if isinstance(layer, BaseTunerLayer) and adapter.name in getattr(layer, "r", {}):
                    adapter.layers.append(f"{part}.{path}")
                    adapter.parts.add(part)

    def discard(self, adapter: PeftAdapter) -> None:
        """Delete one adapter now (e.g. one tried and not used)."""
        if self.adapters.get(adapter.key) is adapter:
            del self.adapters[adapter.key]
            self._delete(adapter.name)
            self._unwrap_unused()
            self._signature = None

    @torch.no_grad()
    def apply(self, wanted: list[tuple[PeftAdapter, float, float]]) -> PeftStats:
        """Make exactly `wanted` (adapter, text-encoder multiplier, UNet multiplier) active; delete all others."""
        start = time.perf_counter()
        stats = PeftStats(injected=self._injected_since_apply)
        self._injected_since_apply = 0
        signature = tuple((adapter.name, float(te), float(unet)) for adapter, te, unet in wanted)
        if signature == self._signature:
            self.last_stats = stats
            return stats
        keep = {adapter.name for adapter, _, _ in wanted}
        for key, adapter in list(self.adapters.items()):
            if adapter.name not in keep:
                del self.adapters[key]
                self._delete(adapter.name)
                stats.removed += 1
        self._unwrap_unused()
        self._set_weights(wanted)
        stats.weights_set = bool(wanted)
        self._signature = signature
        stats.seconds = time.perf_counter() - start
        self.last_stats = stats
        return stats

    def _set_weights(self, wanted: list[tuple[PeftAdapter, float, float]]) -> None:
        from diffusers.loaders.lora_base import set_adapters_for_text_encoder  # noqa: PLC0415

        for part, _, module in self.parts():
            entries = [(adapter.name, unet if part == "unet" else te) for adapter, te, unet in wanted
                       if part in adapter.parts]
            if not entries:
                continue
            names, weights = [name for name, _ in entries], [float(weight) for _, weight in entries]
            if part == "unet":
                module.set_adapters(names, weights)
            else:
                set_adapters_for_text_encoder(names, module, weights)

    def _delete(self, name: str) -> None:
        from diffusers.utils.peft_utils import delete_adapter_layers  # noqa: PLC0415

        for part, _, module in self.parts():
            if part == "unet" and name in (getattr(module, "peft_config", None) or {}):
                module.delete_adapters([name])
            else:
                delete_adapter_layers(module, name)
                config = getattr(module, "peft_config", None)
                if isinstance(config, dict):
                    config.pop(name, None)

    def _unwrap_unused(self) -> None:
        """Replace the PEFT layers of every part that holds no adapter by their original modules."""
        if not _peft_imported():
            return
        from diffusers.utils import recurse_remove_peft_layers  # noqa: PLC0415
        from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

        used = {part for adapter in self.adapters.values() for part in adapter.parts}
        for part, _, module in self.parts():
            if part in used or not any(isinstance(layer, BaseTunerLayer) for layer in module.modules()):
                continue
            recurse_remove_peft_layers(module)
            for attr in ("peft_config", "_hf_peft_config_loaded"):
                if attr in vars(module):
                    delattr(module, attr)

    def remove_all(self) -> PeftStats:
        """Delete every adapter and unwrap every PEFT layer (the model's modules are its own again)."""
        return self.apply([])

    def unwrap_all(self) -> None:
        """Unwrap every PEFT layer of the model, also ones this object did not inject (a model handed to a new
        engine while another one's adapters were still in it): their adapters are dropped."""
        for adapter in list(self.adapters.values()):
            self._delete(adapter.name)
        self.adapters.clear()
        self._unwrap_unused()
        self._signature = ()

    def wrapped_layers(self) -> int:
        """PEFT layers in the model now (0 when no adapter is injected)."""
        if not _peft_imported():
            return 0
        from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

        return sum(isinstance(layer, BaseTunerLayer) for _, _, module in self.parts() for layer in module.modules())
