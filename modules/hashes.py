"""File hashes as A1111 and Civitai compute them, cached in the disk cache.

* `sha256_file`: SHA-256 of the whole file (checkpoints, .pt/.ckpt LoRAs).
* `safetensors_payload_sha256`: SHA-256 of everything after the safetensors header (Civitai "AutoV3",
  kohya "addnet" hash): it does not change when only the metadata is edited.
The short hash shown in infotext is the first 12 hex characters.
"""

from __future__ import annotations

import hashlib
import os
import struct

from modules.cache import DiskCache
from modules.regular_files import open_regular

CHUNK = 1 << 20
SHORT_HASH_LENGTH = 12


def _hash_stream(handle, digest) -> str:
    """Feed the rest of `handle` to `digest` through one reused buffer (no allocation per chunk)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while count := handle.readinto(buffer):
        digest.update(view[:count])
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of the whole file."""
    with open_regular(path) as handle:  # never blocks on a FIFO
        return _hash_stream(handle, hashlib.sha256())


def safetensors_payload_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of the tensor payload: the bytes after the 8-byte length and the JSON header.

    Raises ValueError when the file is too short to hold the header it announces.
    """
    with open_regular(path) as handle:  # never blocks on a FIFO
        raw = handle.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        size = os.fstat(handle.fileno()).st_size
        if header_len > size - 8:
            raise ValueError(f"{path}: header length {header_len} is beyond the end of the file ({size} bytes)")
        handle.seek(8 + header_len)
        return _hash_stream(handle, hashlib.sha256())


def cache_subsection(whole_file: bool) -> str:
    """The cache.json subsection holding whole-file or safetensors-payload hashes."""
    return "hashes-sha256" if whole_file else "hashes-safetensors-payload"


def file_hash(path: str | os.PathLike[str], cache: DiskCache | None = None, whole_file: bool = False) -> str:
    """The hash A1111 shows: for network files the payload hash of .safetensors (whole-file otherwise); with
    `whole_file` (checkpoints: A1111's checkpoint hash, Civitai AutoV2) always the whole file. Cached by mtime and
    size; the caller saves the cache."""
    whole_file = whole_file or not str(path).lower().endswith(".safetensors")
    kind = "sha256" if whole_file else "safetensors-payload"
    subsection = cache_subsection(whole_file)
    if cache is not None:
        cached = cache.get(subsection, path)
        if isinstance(cached, str):
            return cached
    value = safetensors_payload_sha256(path) if kind == "safetensors-payload" else sha256_file(path)
    if cache is not None:
        cache.set(subsection, path, value, save=False)
    return value


def short_hash(full: str) -> str:
    """The 12-character short hash used in infotext and for lookups."""
    return full[:SHORT_HASH_LENGTH]
