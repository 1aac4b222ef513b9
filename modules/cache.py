"""The disk cache (`cache.json`): per-file values such as hashes and safetensors metadata.

Entries live in named subsections and are keyed by the file's absolute path (A1111 keyed by stem, which
collides across subfolders). Each entry stores the file's mtime and size; a lookup whose file changed since
returns nothing. Writes are atomic and batched: `set(..., save=False)` then one `save()`.

The cache only saves work: a save that fails (full disk, read-only folder) is logged, leaves the previous cache.json
as it was, keeps the values in memory and is tried again at the next save; it never fails the caller.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modules.atomic_io import read_json, write_json_atomic
from modules.safe_json import MAX_DEPTH

log = logging.getLogger(__name__)

CACHE_NESTING = 8  # {subsection: {path: {"value": ...}}} plus the value's own wrapper


def file_signature(path: str | os.PathLike[str]) -> tuple[float, int]:
    """(mtime, size) of a file, following symlinks."""
    st = os.stat(path)
    return st.st_mtime, st.st_size


class DiskCache:
    """cache.json as {subsection: {absolute path: {"mtime", "size", "value"}}}."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._dirty = False
        self._data: dict[str, dict[str, Any]] = {}
        if path is not None:
            try:
                # values are JSON read through the same limits: a few levels more for the cache's own nesting
                loaded = read_json(path, default={}, keep_surrogates=True, max_depth=MAX_DEPTH + CACHE_NESTING)
            except (ValueError, OSError) as exc:
                log.warning("%s; starting with an empty cache", exc)
                loaded = {}
            if isinstance(loaded, dict):
                self._data = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    def get(self, subsection: str, filename: str | os.PathLike[str],
            signature: tuple[float, int] | None = None) -> Any | None:
        """The cached value for `filename`, or None when absent or when the file's mtime/size changed.

        `signature` (mtime, size) saves a stat when the caller has just read it.
        """
        key = os.path.abspath(filename)
        with self._lock:
            entry = self._data.get(subsection, {}).get(key)
        if not isinstance(entry, dict):
            return None
        try:
            mtime, size = signature if signature is not None else file_signature(key)
        except OSError:
            return None
        if entry.get("mtime") != mtime or entry.get("size") != size:
            return None
        return entry.get("value")

    def set(self, subsection: str, filename: str | os.PathLike[str], value: Any, save: bool = True) -> None:
        """Store `value` for `filename` with its current mtime and size."""
        key = os.path.abspath(filename)
        mtime, size = file_signature(key)
        with self._lock:
            self._data.setdefault(subsection, {})[key] = {"mtime": mtime, "size": size, "value": value}
            self._dirty = True
        if save:
            self.save()

    def drop(self, subsection: str, filename: str | os.PathLike[str]) -> None:
        """Forget the entry of `filename` (a value that turned out unusable)."""
        key = os.path.abspath(filename)
        with self._lock:
            if self._data.get(subsection, {}).pop(key, None) is not None:
                self._dirty = True

    def prune(self, subsection: str, stale: Callable[[str], bool]) -> int:
        """Drop every entry of `subsection` whose absolute path `stale(path)` says is gone; returns how many."""
        with self._lock:
            section = self._data.get(subsection, {})
            gone = [key for key in section if stale(key)]
            for key in gone:
                del section[key]
            if gone:
                self._dirty = True
            return len(gone)

    def save(self) -> bool:
        """Write cache.json atomically if anything changed since the last save. Returns False when the write
        failed (logged as a warning; the previous file is intact and the next save tries again)."""
        with self._lock:
            if self.path is None or not self._dirty:
                return True
            try:
                write_json_atomic(self.path, self._data, indent=None)
            except OSError as exc:
                log.warning("%s not saved (%s); it will be written at the next save", self.path, exc.strerror or exc)
                return False
            self._dirty = False
            return True
