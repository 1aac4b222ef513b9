"""Reading LoRA files safely: the safetensors header (validated before any tensor is touched), the metadata, and
the tensors (memory-mapped for safetensors; `.pt`/`.ckpt` only through `torch.load(weights_only=True)`).

Every problem raises `LoraFileError` with a message that names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger headers are refused before reading them

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")


class LoraFileError(ValueError):
    """A LoRA file that cannot be read; the message names the file and the problem."""


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate the JSON header of a safetensors file.

    Checks: the file holds the 8-byte length; the length is within the file and under `MAX_HEADER_BYTES`; the header is
    a JSON object; every tensor entry has a known dtype, a shape of non-negative ints and `data_offsets` inside the
    payload whose size equals dtype size x number of elements; tensors do not overlap.
    """
    path = Path(path)
    if path.is_dir():
        raise LoraFileError(f"{path.name}: is a directory, not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise LoraFileError(f"{path.name}: file is {size} bytes, too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES:
                raise LoraFileError(f"{path.name}: header length {header_len} is absurdly large (limit {MAX_HEADER_BYTES})")
            if header_len > size - 8:
                raise LoraFileError(
                    f"{path.name}: header length {header_len} is beyond the end of the file ({size} bytes): truncated?"
                )
            raw = handle.read(header_len)
    except OSError as exc:
        raise LoraFileError(f"{path.name}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{path.name}: safetensors header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise LoraFileError(f"{path.name}: safetensors header is a JSON {type(header).__name__}, not an object")
    payload = size - 8 - header_len
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict):
                raise LoraFileError(f"{path.name}: __metadata__ is not an object")
            continue
        if not isinstance(entry, dict):
            raise LoraFileError(f"{path.name}: tensor {key!r} has no description object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise LoraFileError(f"{path.name}: tensor {key!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise LoraFileError(f"{path.name}: tensor {key!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= payload):
            raise LoraFileError(
                f"{path.name}: tensor {key!r} data offsets {offsets!r} are out of range (payload is {payload} bytes)"
            )
        expected = DTYPE_SIZES[dtype] * math.prod(shape)
        if offsets[1] - offsets[0] != expected:
            raise LoraFileError(
                f"{path.name}: tensor {key!r} occupies {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}"
            )
        spans.append((offsets[0], offsets[1], key))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise LoraFileError(f"{path.name}: tensors {first!r} and {second!r} overlap")
    return header


def decode_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """safetensors `__metadata__` values are strings; those holding a JSON object are decoded (A1111 does this too)."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        decoded[key] = value
    return decoded


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded `__metadata__` of a safetensors file ({} for .pt/.ckpt)."""
    if not str(path).lower().endswith(".safetensors"):
        return {}
    return decode_metadata(read_safetensors_header(path).get("__metadata__", {}) or {})


def tensor_keys(path: str | os.PathLike[str]) -> list[str]:
    """Tensor names of a safetensors file without reading the tensors."""
    return [k for k in read_safetensors_header(path) if k != "__metadata__"]


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file on the CPU.

    safetensors: header validated first, then memory-mapped. `.pt`/`.ckpt`: `torch.load(weights_only=True)`, so a pickle
    that names any global outside torch's allow-list is refused; a top-level `state_dict` is unwrapped.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        read_safetensors_header(path)
        from safetensors.torch import load_file  # noqa: PLC0415

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise LoraFileError(f"{path.name}: cannot read tensors: {exc}") from exc
    if path.suffix.lower() not in (".pt", ".ckpt"):
        raise LoraFileError(f"{path.name}: unsupported file type {path.suffix!r} (expected {', '.join(LORA_EXTENSIONS)})")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise LoraFileError(f"{path.name}: refused to unpickle: the file names a forbidden global ({message})") from exc
        raise LoraFileError(f"{path.name}: cannot read as a torch file: {message}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise LoraFileError(f"{path.name}: holds a {type(data).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise LoraFileError(f"{path.name}: holds no tensors")
    return tensors
