"""A1111's LoRA hash computed independently of the product code (the oracle the API tests compare with)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path


def payload_hash(path: Path) -> str:
    """A1111's LoRA hash: SHA-256 of a safetensors file after its header."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return hashlib.sha256(raw[8 + header_len:]).hexdigest()
