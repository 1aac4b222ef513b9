"""The sidecar `<lora>.json` (A1111's user metadata): read, validate, update, write atomically.

Keys A1111 reads and writes: `description`, `sd version`, `activation text`, `preferred weight`, `negative text`,
`notes`. Every other key already in the file is kept unchanged (other tools store their own data there). A `<lora>.json`
in Civitai's format (`model_info.is_civitai_format`) is never written: saving raises UserMetadataError. Used by the
card editor in the UI and by `POST /sdapi/v1/lora/metadata`, so both write the same file the same way.

Symlinks: the sidecar is read and written only where `library.companion.companion_allowed` allows it (inside the Lora
folders, or beside the LoRA file's real location); a sidecar that is a symlink to anywhere else raises
`SidecarNotAllowed` (the API and the card page answer 403) and is neither read nor replaced. An allowed sidecar that
is itself a symlink is read and written at its real path: `write_json_atomic` renames a new file over its target,
which would turn the link into a regular file and leave the linked file stale; writing at the real path updates the
file the link points to and keeps the link.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from modules.atomic_io import read_json, write_json_atomic

from ..errors import LoraError
from ..formats.family import KNOWN, SdVersion
from .companion import companion_allowed
from .model_info import is_civitai_format
from .registry import NetworkOnDisk

EDITABLE_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
SD_VERSIONS = (*KNOWN, SdVersion.Unknown)
MAX_TEXT = 100_000
# One read-modify-write of a sidecar at a time, whoever writes (the API, the card editor, any thread): without it two
# concurrent saves both read the old file and the second write brings back a value the first one replaced.
_WRITE_LOCK = threading.Lock()


class UserMetadataError(LoraError):
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


class SidecarNotAllowed(UserMetadataError):
    """The sidecar is a symlink to a place `companion_allowed` refuses: it is neither read nor written."""


def sidecar_target(entry: NetworkOnDisk, roots: Iterable[str | os.PathLike[str]] | None = None) -> Path:
    """Where the entry's sidecar is read and written: its path, or the real path when the sidecar itself is a symlink
    (so an allowed link is kept and its target updated); SidecarNotAllowed when the companion rule refuses it.
    `roots` are the Lora folders (the registry's roots); without them, the entry's own root."""
    sidecar = entry.sidecar_path()
    if not companion_allowed(sidecar, entry.filename, [entry.root] if roots is None else roots):
        raise SidecarNotAllowed(f"the sidecar {sidecar.name} lies outside the Lora folders and not beside the LoRA "
                                "file (a symlink to elsewhere): it is neither read nor written")
    return Path(os.path.realpath(sidecar)) if sidecar.is_symlink() else sidecar


def read_user_metadata(entry: NetworkOnDisk, roots: Iterable[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """The sidecar's content ({} when there is none); a malformed sidecar raises UserMetadataError, one refused by
    the companion rule SidecarNotAllowed (see `sidecar_target` for `roots`)."""
    target = sidecar_target(entry, roots)  # outside the `try`: SidecarNotAllowed is a ValueError too
    try:
        data = read_json(target, default={})
    except ValueError as exc:
        raise UserMetadataError(str(exc)) from exc
    if not isinstance(data, dict):
        raise UserMetadataError(f"{entry.sidecar_path().name}: expected a JSON object")
    return data


def save_user_metadata(entry: NetworkOnDisk, changes: dict[str, Any],
                       roots: Iterable[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Merge validated `changes` into the sidecar (unknown keys kept), write it atomically as UTF-8 at its real path,
    update the entry in memory, and return the new content. Concurrent saves are serialised, so none is lost. A
    sidecar refused by the companion rule raises SidecarNotAllowed and nothing is written (`roots` as in
    `sidecar_target`)."""
    clean = validate(changes)
    roots = None if roots is None else list(roots)
    with _WRITE_LOCK:
        target = sidecar_target(entry, roots)
        data = read_user_metadata(entry, roots)
        if is_civitai_format(data):
            raise UserMetadataError(
                f"{entry.sidecar_path().name} holds Civitai's model data (SD.Next's format), which is kept read-only; "
                f"rename it to {entry.civitai_info_path().name} (still read) to edit this card's fields")
        data.update(clean)
        write_json_atomic(target, data)
        entry.user_metadata = data
        entry.sidecar_problem = None
    return data
