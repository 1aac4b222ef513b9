"""The `lora` extra network (alias `lyco`): turns `<lora:...>` tags into engine requests, reports problems, writes
the `Lora hashes` infotext.

Tag syntax (A1111's plus extensions):
* `<lora:name>`, `<lora:name:w>` (text encoder and UNet), `<lora:name:te:unet>`, `<lora:name:te:unet:dyn>`
* named `te=`, `unet=`, `dyn=` override the positional ones; `hr=w` is the weight in the hires pass (both parts).
A malformed tag (`<lora:x:abc>`, `<lora:x:>`, a NaN weight) is reported in the generation's comments naming the tag,
and the other LoRAs in the prompt still apply (A1111 drops all of them).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from bundled_embeddings import sync_bundled_embeddings
from networks import ActivationReport, LoraEngine, NetworkRequest

from modules.extra_networks import ExtraNetwork, ExtraNetworkParams, add_comment
from modules.textual_inversion import EmbeddingDatabase

log = logging.getLogger(__name__)

KNOWN_NAMED = {"te", "unet", "dyn", "hr"}


class TagError(ValueError):
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


def parse_request(params: ExtraNetworkParams, is_hr_pass: bool = False) -> NetworkRequest:
    """One tag's params -> a NetworkRequest (multipliers as A1111 computes them). Raises TagError."""
    tag = params.text or "<lora:" + ":".join(params.items) + ">"
    pos, named = params.positional, params.named
    if not pos or not pos[0].strip():
        raise TagError(f"{tag}: the LoRA name is missing")
    unknown = sorted(set(named) - KNOWN_NAMED)
    if unknown:
        raise TagError(f"{tag}: unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}")
    if len(pos) > 4:
        raise TagError(f"{tag}: too many values (name, te, unet, dyn at most)")
    te = _number(tag, "weight", pos[1]) if len(pos) > 1 else 1.0
    te = _number(tag, "te", named["te"]) if "te" in named else te
    unet = _number(tag, "unet weight", pos[2]) if len(pos) > 2 else te
    unet = _number(tag, "unet", named["unet"]) if "unet" in named else unet
    dyn = _integer(tag, "dyn", pos[3]) if len(pos) > 3 else None
    dyn = _integer(tag, "dyn", named["dyn"]) if "dyn" in named else dyn
    if is_hr_pass and "hr" in named:
        te = unet = _number(tag, "hr", named["hr"])
    elif "hr" in named:
        _number(tag, "hr", named["hr"])  # validated in the first pass already
    return NetworkRequest(name=pos[0], te_multiplier=te, unet_multiplier=unet, dyn_dim=dyn)


def infotext_name(name: str) -> str:
    """The name as written into `Lora hashes` (A1111 removes `:` and `,`)."""
    return name.replace(":", "").replace(",", "")


class ExtraNetworkLora(ExtraNetwork):
    """The handler registered as `lora` (and `lyco`)."""

    name = "lora"

    def __init__(self, engine: LoraEngine, options: Any, current_model: Any,
                 embeddings: EmbeddingDatabase | None = None) -> None:
        self.engine = engine
        self.options = options
        self.current_model = current_model  # callable returning the loaded model (or None)
        self.embeddings = embeddings  # bundled embeddings are registered here while their LoRA is active

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        is_hr = bool(getattr(p, "is_hr_pass", False))
        requests: list[NetworkRequest] = []
        for params in params_list:
            try:
                requests.append(parse_request(params, is_hr))
            except TagError as exc:
                log.warning("%s", exc)
                add_comment(p, str(exc))
        model = getattr(p, "sd_model", None) or self.current_model()
        if model is None:
            return
        if self.engine.model is not model:
            self.engine.set_model(model)
        report = self.engine.activate(requests)
        if self.embeddings is not None:
            for message in sync_bundled_embeddings(self.embeddings, report.active, model.text_encoders):
                add_comment(p, f"Lora: {message}")
        self._report(p, report, is_hr)

    def _report(self, p: Any, report: ActivationReport, is_hr: bool) -> None:
        if report.not_found:
            add_comment(p, "Lora not found: " + ", ".join(report.not_found))
        for name, message in report.errors.items():
            add_comment(p, f"Lora {name} not applied: {message}" if not message.startswith(name) else message)
        for line in dict.fromkeys(report.warnings):
            add_comment(p, f"Lora {line}")
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

    def deactivate(self, p: Any) -> None:
        """Weights stay merged after the generation (the next one with the same set touches nothing)."""


def _parse_hashes(text: str) -> dict[str, str]:
    """`"a: 0123, b: 4567"` -> {"a": "0123", "b": "4567"}; parts without `:` are ignored."""
    found: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, value = part.partition(":")
        if sep and name.strip():
            found[name.strip()] = value.strip()
    return found


def rewrite_names_by_hash(prompt: str, hashes_text: str, find_by_short_hash: Any, alias_of: Any) -> str:
    """Replace `<lora:NAME:` whose NAME is in `Lora hashes` with the local file that has that short hash (A1111)."""
    import re  # noqa: PLC0415

    hashes = _parse_hashes(hashes_text)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        shorthash = hashes.get(infotext_name(name))
        entry = find_by_short_hash(shorthash) if shorthash else None
        return f"<lora:{alias_of(entry)}:" if entry is not None else match.group(0)

    return re.sub(r"<lora:([^:>]+):", replace, prompt)
