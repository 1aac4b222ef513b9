"""diffusers/PEFT adapter metadata in LoRA files: the `lora_adapter_metadata` header entry (LoraConfig fields) and
PEFT's `alpha_pattern`, read in one place for the native loader and the diffusers method.

* `adapter_metadata(metadata)`: the entry as a dict (decoded from JSON when stored as text), or None.
* `pattern_alpha(pattern, layer)`: the alpha an `alpha_pattern` gives a layer key: the first pattern the key ends
  with (a leading `^` anchor is ignored, as PEFT's patterns are matched against the module path's end), or None.
* `peft_alphas(metadata, prefix)`: (lora_alpha, alpha_pattern) for one part (`unet`, `text_encoder`, ...).
"""

from __future__ import annotations

import math
from typing import Any

from modules import safe_json

from ..errors import FormatError


class AdapterMetadataError(FormatError):
    """A `lora_adapter_metadata` whose alpha values are not finite numbers; the message names the field."""


def adapter_metadata(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """diffusers' `lora_adapter_metadata` header entry (LoraConfig fields) as a dict, or None."""
    raw = metadata.get("lora_adapter_metadata")
    if isinstance(raw, str):
        try:
            raw = safe_json.loads(raw)
        except safe_json.JsonError:
            return None
    return raw if isinstance(raw, dict) and raw else None


def pattern_alpha(pattern: dict[str, float], layer: str) -> float | None:
    """The alpha `pattern` (PEFT's `alpha_pattern`) gives the layer key `layer`, or None when no pattern matches."""
    return next((value for key, value in pattern.items() if layer.endswith(key.lstrip("^"))), None)


def peft_alphas(metadata: dict[str, Any], prefix: str = "") -> tuple[float | None, dict[str, float]]:
    """(lora_alpha, alpha_pattern) from diffusers' `lora_adapter_metadata` header entry, if present.

    diffusers writes one LoraConfig per part with prefixed keys (`unet.lora_alpha`, `text_encoder.alpha_pattern`);
    `prefix` picks that part's entries, falling back to unprefixed ones (`lora_alpha`) as other tools write them."""
    raw = adapter_metadata(metadata)
    if raw is None:
        return None, {}
    if prefix and f"{prefix}.lora_alpha" in raw:
        raw = {"lora_alpha": raw[f"{prefix}.lora_alpha"], "alpha_pattern": raw.get(f"{prefix}.alpha_pattern")}
    alpha = raw.get("lora_alpha")
    pattern = raw.get("alpha_pattern") or {}
    if not isinstance(pattern, dict):
        raise AdapterMetadataError(f"lora_adapter_metadata: alpha_pattern is a {type(pattern).__name__}, not an object")
    return (_alpha("lora_alpha", alpha) if alpha is not None else None), \
        {str(k): _alpha(f"alpha_pattern[{k!r}]", v) for k, v in pattern.items()}


def _alpha(field: str, value: Any) -> float:
    """`value` as a finite float; AdapterMetadataError naming `field` otherwise."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise AdapterMetadataError(f"lora_adapter_metadata: {field} is {str(value)[:60]!r}, not a number") from None
    if not math.isfinite(number):
        raise AdapterMetadataError(f"lora_adapter_metadata: {field} is {number}, not a finite number")
    return number
