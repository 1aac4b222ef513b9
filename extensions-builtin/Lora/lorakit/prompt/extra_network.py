"""The `lora` extra network (alias `lyco`): turns `<lora:...>` tags into engine requests, reports problems, writes
the `Lora hashes` infotext.

Tag syntax (A1111's plus extensions):
* `<lora:name>`, `<lora:name:w>` (text encoder and UNet), `<lora:name:te:unet>`, `<lora:name:te:unet:dyn>`
* named `te=`, `unet=`, `dyn=` override the positional ones; `hr=w` is the weight in the hires pass (both parts).
A malformed tag (`<lora:x:abc>`, `<lora:x:>`, a NaN weight) is reported in the generation's comments naming the tag,
and the other LoRAs in the prompt still apply (A1111 drops all of them). A name whose file the registry scan skipped
(truncated, not a safetensors file, ...) is reported with the scan's reason rather than as "not found".

The `lora_method` setting picks how LoRAs are applied ("native merge" or "diffusers" adapters, see `peft_method.py`,
which also documents the `Lora method` infotext written here).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modules.extra_networks import ExtraNetwork, ExtraNetworkParams, add_comment
from modules.generation_state import GenerationRequest
from modules.textual_inversion import EmbeddingDatabase

from ..engine import peft_method
from ..engine.engine import ActivationReport, LoraEngine, NetworkRequest
from ..errors import LoraError
from ..formats.family import SdVersion
from . import block_weights
from .bundled_embeddings import sync_bundled_embeddings
from .schedule import Schedule, ScheduleError, gate_open, parse_gate

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.options import Options
    from modules.sd_model_types import LoadedModel

    from ..library.registry import NetworkOnDisk

log = logging.getLogger(__name__)

KNOWN_NAMED = {"te", "unet", "dyn", "hr", "lbw", "w", "in", "mid", "out", "start", "stop"}


class TagError(LoraError):
    """A `<lora:...>` tag that cannot be understood; the message quotes the tag."""


def _number(tag: str, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TagError(f"{tag}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TagError(f"{tag}: {what} {text!r} is not a finite number")
    return value


def _integer(tag: str, what: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise TagError(f"{tag}: {what} {text!r} is not a whole number") from None
    if value < 1:
        raise TagError(f"{tag}: {what} must be at least 1, got {value}")
    return value


def _weight(tag: str, what: str, text: str) -> Schedule:
    """A weight: a number, or keyframes `w@step,...`."""
    if "@" not in text:
        return Schedule(((0.0, _number(tag, what, text)),))
    try:
        return Schedule.parse(text)
    except ScheduleError as exc:
        raise TagError(f"{tag}: {what}: {exc}") from None


@dataclass
class LoraTag:
    """One parsed `<lora:...>` tag: weights (possibly scheduled), rank cut, hires weight, gates, block weights."""

    name: str
    te: Schedule
    unet: Schedule
    text: str
    dyn: int | None = None
    hr: float | None = None
    start: float | None = None
    stop: float | None = None
    lbw: str | None = None
    in_w: float | None = None
    mid_w: float | None = None
    out_w: float | None = None

    @property
    def is_scheduled(self) -> bool:
        """True when the weight changes during sampling (gates or keyframes)."""
        return (self.start is not None or self.stop is not None or not self.te.is_constant
                or not self.unet.is_constant)

    def request(self, family: str, step: int = 0, total: int = 1, is_hr_pass: bool = False,
                user_presets: dict[str, list[float]] | None = None) -> NetworkRequest:
        """The engine request at `step` of a `total`-step pass. Raises TagError for block weights that do not fit."""
        te, unet = self.te.at(step, total), self.unet.at(step, total)
        if is_hr_pass and self.hr is not None:
            te = unet = self.hr
        if not gate_open(step, total, self.start, self.stop):
            te = unet = 0.0
        try:
            factor = block_weights.layer_factor(family, self.lbw, self.in_w, self.mid_w, self.out_w, user_presets)
        except block_weights.BlockWeightError as exc:
            raise TagError(f"{self.text}: {exc}") from None
        return NetworkRequest(name=self.name, te_multiplier=te, unet_multiplier=unet, dyn_dim=self.dyn,
                              layer_factor=factor, scheduled=self.is_scheduled)


def parse_tag(params: ExtraNetworkParams) -> LoraTag:
    """One tag's params -> a LoraTag (multipliers as A1111 computes them, plus our extensions). Raises TagError."""
    tag = params.text or "<lora:" + ":".join(params.items) + ">"
    pos, named = params.positional, dict(params.named)
    if "w" in named:  # lora-block-weight's alias of lbw
        named.setdefault("lbw", named.pop("w"))
    if not pos or not pos[0].strip():
        raise TagError(f"{tag}: the LoRA name is missing")
    unknown = sorted(set(named) - KNOWN_NAMED)
    if unknown:
        raise TagError(f"{tag}: unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    if len(pos) > 4:
        raise TagError(f"{tag}: too many values (name, te, unet, dyn at most)")
    te = _weight(tag, "weight", pos[1]) if len(pos) > 1 else Schedule(((0.0, 1.0),))
    te = _weight(tag, "te", named["te"]) if "te" in named else te
    unet = _weight(tag, "unet weight", pos[2]) if len(pos) > 2 else te
    unet = _weight(tag, "unet", named["unet"]) if "unet" in named else unet
    dyn = _integer(tag, "dyn", pos[3]) if len(pos) > 3 else None
    dyn = _integer(tag, "dyn", named["dyn"]) if "dyn" in named else dyn
    result = LoraTag(name=pos[0], te=te, unet=unet, text=tag, dyn=dyn)
    if "hr" in named:
        result.hr = _number(tag, "hr", named["hr"])
    for key in ("start", "stop"):
        if key in named:
            try:
                setattr(result, key, parse_gate(named[key], key))
            except ScheduleError as exc:
                raise TagError(f"{tag}: {exc}") from None
    for key, attr in (("in", "in_w"), ("mid", "mid_w"), ("out", "out_w")):
        if key in named:
            setattr(result, attr, _number(tag, key, named[key]))
    if "lbw" in named:
        result.lbw = named["lbw"]
    return result


def parse_request(params: ExtraNetworkParams, is_hr_pass: bool = False, family: str = SdVersion.SD1) -> NetworkRequest:
    """One tag's params -> the engine request at the first step (see `LoraTag.request`). Raises TagError."""
    return parse_tag(params).request(family, is_hr_pass=is_hr_pass)


@dataclass
class LoraStepState:
    """Per-generation schedule state, kept in the generation's `GenerationState` (`p.generation_state`)."""

    tags: list[LoraTag]
    is_hr: bool
    family: str
    presets: dict[str, list[float]]
    method: str = peft_method.METHOD_NATIVE
    applied: tuple = ()
    history: list[tuple[int, dict[str, tuple[float, float]], int]] = field(default_factory=list)


def infotext_name(name: str) -> str:
    """The name as written into `Lora hashes` (A1111 removes `:` and `,`)."""
    return name.replace(":", "").replace(",", "")


class ExtraNetworkLora(ExtraNetwork):
    """The handler registered as `lora` (and `lyco`)."""

    name = "lora"

    def __init__(self, engine: LoraEngine, options: Options, current_model: Callable[[], LoadedModel | None],
                 embeddings: EmbeddingDatabase | None = None) -> None:
        self.engine = engine
        self.options = options
        self.current_model = current_model  # callable returning the loaded model (or None)
        self.embeddings = embeddings  # bundled embeddings are registered here while their LoRA is active

    def activate(self, p: GenerationRequest, params_list: list[ExtraNetworkParams]) -> None:
        """Apply the prompt's LoRAs at the pass's first step; scheduled ones are re-applied by `on_step`."""
        is_hr = bool(getattr(p, "is_hr_pass", False))
        model = getattr(p, "sd_model", None) or self.current_model()
        if model is None:
            return
        if self.engine.model is not model:
            self.engine.set_model(model)
        presets = self.user_presets()
        tags: list[LoraTag] = []
        requests: list[NetworkRequest] = []
        for params in params_list:
            try:
                tag = parse_tag(params)
                requests.append(tag.request(model.family, 0, self._pass_steps(p, is_hr), is_hr, presets))
                tags.append(tag)
            except TagError as exc:
                log.warning("%s", exc)
                add_comment(p, str(exc))
        method = self.method()
        report = self.engine.activate(requests, method=method)
        active_names = {a.request.name for a in report.active}
        # Only tags that loaded take part in step re-application (no rescans or error repeats per step).
        p.generation_state.put(LoraStepState([t for t in tags if t.name in active_names], is_hr, model.family,
                                             presets, method))
        if self.embeddings is not None:
            for message in sync_bundled_embeddings(self.embeddings, report.active, model.text_encoders):
                add_comment(p, f"Lora: {message}")
        self._report(p, report, is_hr)

    @staticmethod
    def _pass_steps(p: GenerationRequest, is_hr: bool) -> int:
        steps = int(getattr(p, "steps", 1) or 1)
        return int(getattr(p, "hr_second_pass_steps", 0) or steps) if is_hr else steps

    def method(self) -> str:
        """The engine method ("native" / "diffusers") the `lora_method` setting asks for."""
        try:
            return peft_method.method_from_option(self.options.get("lora_method"))
        except KeyError:
            return peft_method.METHOD_NATIVE

    def user_presets(self) -> dict[str, list[float]]:
        """lora-block-weight presets from the `lora_lbw_presets` option (`NAME:v1,v2,...` per line)."""
        try:
            return block_weights.parse_presets(str(self.options.get("lora_lbw_presets") or ""))
        except KeyError:
            return {}

    def on_step(self, p: GenerationRequest, step: int, total: int) -> None:
        """`process_step` callback: re-apply scheduled LoRAs when their weights change at this step. Only layers
        whose multiplier changed are rewritten; when a text-encoder layer changed, `conditioning_stale` asks the
        sampler to encode the prompts again."""
        state = p.generation_state.get(LoraStepState)
        if state is None or not any(tag.is_scheduled for tag in state.tags):
            return
        requests = [tag.request(state.family, step, total, state.is_hr, state.presets) for tag in state.tags]
        key = tuple((r.name, r.te_multiplier, r.unet_multiplier) for r in requests)
        if key == state.applied:
            return
        report = self.engine.activate(requests, method=state.method)
        state.applied = key
        state.history.append((step, {a.request.name: (a.request.te_multiplier, a.request.unet_multiplier)
                                     for a in report.active}, report.stats.layers_touched))
        if any(name.startswith("text_encoders.") for name in report.stats.touched):
            p.generation_state.conditioning_stale = True

    def _report(self, p: GenerationRequest, report: ActivationReport, is_hr: bool) -> None:
        missing = []
        for name in report.not_found:  # a file that exists but was skipped by the scan: say why, not "not found"
            reason = self.engine.registry.skipped_reason(name)
            if reason is None:
                missing.append(name)
            else:
                add_comment(p, f"Lora {name} not applied: {reason}")
        if missing:
            add_comment(p, "Lora not found: " + ", ".join(missing))
        for name, message in report.errors.items():
            add_comment(p, f"Lora {name} not applied: {message}" if not message.startswith(name) else message)
        for line in dict.fromkeys(report.warnings):
            add_comment(p, f"Lora {line}")
        self._write_method(p, report, is_hr)
        if not self.options.get("lora_add_hashes_to_infotext"):
            return
        params = getattr(p, "extra_generation_params", None)
        if params is None:
            return
        hashes: dict[str, str] = {}
        if is_hr:
            hashes.update(_parse_hashes(params.get("Lora hashes", "")))
        for active in report.active:
            shorthash = active.network.on_disk.shorthash
            if shorthash:
                hashes[infotext_name(active.request.name)] = shorthash
        if hashes:
            params["Lora hashes"] = ", ".join(f"{name}: {value}" for name, value in hashes.items())
        else:
            params.pop("Lora hashes", None)

    def _write_method(self, p: GenerationRequest, report: ActivationReport, is_hr: bool) -> None:
        """`Lora method` in the infotext (format in `peft_method`'s docstring); the hires pass keeps the first's."""
        params = getattr(p, "extra_generation_params", None)
        if params is None:
            return
        state = p.generation_state.get(LoraStepState)
        method = state.method if state is not None else self.method()
        used = [(infotext_name(a.request.name), a.method) for a in report.active]
        value = peft_method.infotext_value(method, used, params.get(peft_method.INFOTEXT_KEY) if is_hr else None)
        if value is None:
            params.pop(peft_method.INFOTEXT_KEY, None)
        else:
            params[peft_method.INFOTEXT_KEY] = value

    def deactivate(self, p: GenerationRequest) -> None:
        """Weights stay merged after the generation (the next one with the same set touches nothing)."""


def _parse_hashes(text: str) -> dict[str, str]:
    """`"a: 0123, b: 4567"` -> {"a": "0123", "b": "4567"}; parts without `:` are ignored."""
    found: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, value = part.partition(":")
        if sep and name.strip():
            found[name.strip()] = value.strip()
    return found


def rewrite_names_by_hash(prompt: str, hashes_text: str, find_by_short_hash: Callable[[str], NetworkOnDisk | None],
                          alias_of: Callable[[NetworkOnDisk], str]) -> str:
    """Replace `<lora:NAME:` whose NAME is in `Lora hashes` with the local file that has that short hash (A1111)."""
    import re  # noqa: PLC0415

    hashes = _parse_hashes(hashes_text)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        shorthash = hashes.get(infotext_name(name))
        entry = find_by_short_hash(shorthash) if shorthash else None
        return f"<lora:{alias_of(entry)}:" if entry is not None else match.group(0)

    return re.sub(r"<lora:([^:>]+):", replace, prompt)
