"""The sidecar `<lora>.json` (A1111's user metadata): read, validate, update, write atomically.

Keys A1111 reads and writes: `description`, `sd version`, `activation text`, `preferred weight`, `negative text`,
`notes`. Every other key already in the file is kept unchanged (other tools store their own data there). Used by the
card editor in the UI and by `POST /sdapi/v1/lora/metadata`, so both write the same file the same way.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from lora_registry import NetworkOnDisk

from modules.atomic_io import read_json, write_json_atomic

EDITABLE_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
SD_VERSIONS = ("SD1", "SD2", "SDXL", "Unknown")
MAX_TEXT = 100_000
# One read-modify-write of a sidecar at a time, whoever writes (the API, the card editor, any thread): without it two
# concurrent saves both read the old file and the second write brings back a value the first one replaced.
_WRITE_LOCK = threading.Lock()


class UserMetadataError(ValueError):
    """A field value the sidecar cannot take; the message names the field."""


def validate(changes: dict[str, Any]) -> dict[str, Any]:
    """Check and normalise edited fields (unknown field names are refused; `preferred weight` is a finite number,
    0 meaning "use the default multiplier"; `sd version` one of SD1/SD2/SDXL/Unknown; texts are strings)."""
    clean: dict[str, Any] = {}
    for key, value in changes.items():
        if key not in EDITABLE_KEYS:
            raise UserMetadataError(f"unknown field {key!r}; editable fields: {', '.join(EDITABLE_KEYS)}")
        if key == "preferred weight":
            try:
                number = float(value if value not in ("", None) else 0)
            except (TypeError, ValueError):
                raise UserMetadataError(f"preferred weight must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise UserMetadataError(f"preferred weight must be finite, got {value!r}")
            clean[key] = number
        elif key == "sd version":
            if value not in SD_VERSIONS:
                raise UserMetadataError(f"sd version must be one of {', '.join(SD_VERSIONS)}, got {value!r}")
            clean[key] = value
        else:
            if not isinstance(value, str):
                raise UserMetadataError(f"{key} must be text, got {type(value).__name__}")
            if len(value) > MAX_TEXT:
                raise UserMetadataError(f"{key} is longer than {MAX_TEXT} characters")
            clean[key] = value
    return clean


def read_user_metadata(entry: NetworkOnDisk) -> dict[str, Any]:
    """The sidecar's content ({} when there is none); a malformed sidecar raises UserMetadataError."""
    try:
        data = read_json(entry.sidecar_path(), default={})
    except ValueError as exc:
        raise UserMetadataError(str(exc)) from exc
    if not isinstance(data, dict):
        raise UserMetadataError(f"{entry.sidecar_path().name}: expected a JSON object")
    return data


def save_user_metadata(entry: NetworkOnDisk, changes: dict[str, Any]) -> dict[str, Any]:
    """Merge validated `changes` into the sidecar (unknown keys kept), write it atomically as UTF-8, update the
    entry in memory, and return the new content. Concurrent saves are serialised, so none is lost."""
    clean = validate(changes)
    with _WRITE_LOCK:
        data = read_user_metadata(entry)
        data.update(clean)
        write_json_atomic(entry.sidecar_path(), data)
        entry.user_metadata = data
    return data
