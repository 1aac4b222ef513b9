"""The safetensors header, validated before any tensor is read (used for checkpoints and LoRA files alike).

Layout: an 8-byte little-endian length N, N bytes of JSON, then the tensor payload. Every problem raises
`SafetensorsHeaderError` whose message says what is wrong (callers add the file name their way).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger headers are refused before reading them

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


class SafetensorsHeaderError(ValueError):
    """A file whose safetensors framing or header is broken."""


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate the JSON header of a safetensors file.

    Checks: the file holds the 8-byte length; the length is within the file and under `MAX_HEADER_BYTES`; the header is
    a JSON object; every tensor entry has a known dtype, a shape of non-negative ints and `data_offsets` inside the
    payload whose size equals dtype size x number of elements; tensors do not overlap.
    """
    path = Path(path)
    if path.is_dir():
        raise SafetensorsHeaderError("is a directory, not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise SafetensorsHeaderError(f"file is {size} bytes, too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES:
                raise SafetensorsHeaderError(f"header length {header_len} is absurdly large (limit {MAX_HEADER_BYTES})")
            if header_len > size - 8:
                raise SafetensorsHeaderError(
                    f"header length {header_len} is beyond the end of the file ({size} bytes): truncated?"
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise SafetensorsHeaderError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(f"safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"safetensors header is a JSON {type(header).__name__}, not an object")
    payload = size - 8 - header_len
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict):
                raise SafetensorsHeaderError("__metadata__ is not an object")
            continue
        if not isinstance(entry, dict):
            raise SafetensorsHeaderError(f"tensor {key!r} has no description object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise SafetensorsHeaderError(f"tensor {key!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SafetensorsHeaderError(f"tensor {key!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= payload):
            raise SafetensorsHeaderError(
                f"tensor {key!r} data offsets {offsets!r} are out of range (payload is {payload} bytes)"
            )
        expected = DTYPE_SIZES[dtype] * math.prod(shape)
        if offsets[1] - offsets[0] != expected:
            raise SafetensorsHeaderError(
                f"tensor {key!r} occupies {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}"
            )
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise SafetensorsHeaderError(f"tensors {first!r} and {second!r} overlap")
    return header
