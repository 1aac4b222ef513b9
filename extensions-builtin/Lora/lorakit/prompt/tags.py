"""`<lora:...>` tags: A1111's syntax plus extensions, parsed into `LoraTag`s and engine requests.

* `<lora:name>`, `<lora:name:w>` (text encoder and UNet), `<lora:name:te:unet>`, `<lora:name:te:unet:dyn>`
* named `te=`, `unet=`, `dyn=` override the positional ones; `hr=w` is the weight in the hires pass (both parts);
  `lbw=` (alias `w=`), `in=`, `mid=`, `out=` block weights; `start=`, `stop=` gates; keyframes `w@step,...`.
Every problem raises `TagError` with a message that quotes the tag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modules.extra_networks import ExtraNetworkParams

from ..engine.engine import NetworkRequest
from ..errors import LoraError
from ..formats.blocks import BlockLayout
from ..formats.family import SdVersion
from . import block_weights
from .schedule import Schedule, ScheduleError, gate_open, parse_gate

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

    def request(self, blocks: BlockLayout, step: int = 0, total: int = 1, is_hr_pass: bool = False,
                user_presets: dict[str, list[float]] | None = None) -> NetworkRequest:
        """The engine request at `step` of a `total`-step pass on a model of layout `blocks`
        (`BlockLayout.of_model`). Raises TagError for block weights that do not fit."""
        te, unet = self.te.at(step, total), self.unet.at(step, total)
        if is_hr_pass and self.hr is not None:
            te = unet = self.hr
        if not gate_open(step, total, self.start, self.stop):
            te = unet = 0.0
        try:
            factor = block_weights.layer_factor(blocks, self.lbw, self.in_w, self.mid_w, self.out_w, user_presets)
        except block_weights.BlockWeightError as exc:
            raise TagError(f"{self.text}: {exc}") from None
        return NetworkRequest(name=self.name, te_multiplier=te, unet_multiplier=unet, dyn_dim=self.dyn,
                              layer_factor=factor, scheduled=self.is_scheduled)

    def notices(self, blocks: BlockLayout) -> list[str]:
        """Notices for the user about this tag on a model of layout `blocks` (arguments accepted but ignored), each
        quoting the tag."""
        return [f"{self.text}: {notice}" for notice in block_weights.notices(blocks, self.mid_w)]


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


def parse_request(params: ExtraNetworkParams, is_hr_pass: bool = False,
                  blocks: BlockLayout = BlockLayout(SdVersion.SD1)) -> NetworkRequest:
    """One tag's params -> the engine request at the first step on a model of layout `blocks` (see
    `LoraTag.request`). Raises TagError."""
    return parse_tag(params).request(blocks, is_hr_pass=is_hr_pass)
