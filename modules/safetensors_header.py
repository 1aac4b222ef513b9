"""The safetensors format in one place: the header validated before any tensor is read (checkpoints and LoRA files
alike), and the one writer every file the project saves goes through.

Layout: an 8-byte little-endian length N, N bytes of JSON, then the tensor payload. Every problem raises
`SafetensorsHeaderError` whose message says what is wrong (callers add the file name their way).

Writing (`write_safetensors`): the same input always gives the same bytes. The safetensors library writes
`__metadata__` in hash-map order, which differs from process to process (three fresh starts gave three checkpoint
hashes); here the metadata keys are sorted, and tensors are laid out as the library lays them out (by dtype,
larger elements first, so every tensor is aligned to its element size; then by name), so a file without metadata is
byte-identical to the library's own. Tensors are streamed to the file one at a time (no whole-file buffer);
`write_safetensors_stream` also makes them one at a time (the merge tool, the benchmarks' full-size checkpoints).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from modules import safe_json
from modules.atomic_io import atomic_path
from modules.regular_files import NotRegularFileError, open_regular

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger headers are refused before reading them

DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


TORCH_DTYPES = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.int16: "I16", torch.uint16: "U16", torch.float16: "F16",
    torch.bfloat16: "BF16", torch.int32: "I32", torch.uint32: "U32", torch.float32: "F32", torch.int64: "I64",
    torch.uint64: "U64", torch.float64: "F64",
}
# The library's payload order: by dtype in this order (its dtype enum, reversed: element sizes never grow, so each
# tensor stays aligned to its element size), then by name.
PAYLOAD_ORDER = ("U64", "I64", "F64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3", "F8_E5M2", "I8",
                 "U8", "BOOL")
HEADER_ALIGNMENT = 8  # the JSON is padded with spaces so that the payload starts 8-byte aligned


class SafetensorsHeaderError(ValueError):
    """A file whose safetensors framing or header is broken."""


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate the JSON header of a safetensors file.

    Checks: the file holds the 8-byte length; the length is within the file and under `MAX_HEADER_BYTES`; the header is
    a JSON object; every tensor entry has a known dtype, a shape of non-negative ints and `data_offsets` inside the
    payload whose size equals dtype size x number of elements; tensors do not overlap.
    """
    path = Path(path)
    try:
        with open_regular(path) as handle:  # never blocks on a FIFO; refuses folders and devices
            size = os.fstat(handle.fileno()).st_size
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
    except NotRegularFileError as exc:
        raise SafetensorsHeaderError(str(exc.strerror)) from None
    except OSError as exc:
        raise SafetensorsHeaderError(f"cannot read: {exc.strerror or exc}") from exc
    try:
        header = safe_json.loads(raw, max_bytes=MAX_HEADER_BYTES)
    except safe_json.JsonError as exc:
        raise SafetensorsHeaderError(f"safetensors header {exc}") from None
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


def encode_header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                  ) -> tuple[bytes, list[str]]:
    """(the 8-byte length + padded JSON header, tensor names in payload order) for `tensors` and `metadata`.

    Metadata keys are sorted; tensors are ordered as the library orders them (PAYLOAD_ORDER, then name). Raises
    SafetensorsHeaderError for a dtype safetensors cannot hold or metadata that is not str -> str."""
    for name, tensor in tensors.items():
        if tensor.dtype not in TORCH_DTYPES:
            raise SafetensorsHeaderError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot hold")
    order = sorted(tensors, key=lambda name: (PAYLOAD_ORDER.index(TORCH_DTYPES[tensors[name].dtype]), name))
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise SafetensorsHeaderError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(sorted(metadata.items()))
    offset = 0
    for name in order:
        tensor = tensors[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": TORCH_DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    try:
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (names decoded from non-UTF-8 bytes): escaped, read back the same
        raw = json.dumps(header, separators=(",", ":")).encode("ascii")
    raw += b" " * (-len(raw) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw, order


NAMED_DTYPES = {name: dtype for dtype, name in TORCH_DTYPES.items()}


class SafetensorsReader:
    """One validated safetensors file, read one tensor at a time with plain reads (no memory map), for the model
    loader and the merge tool: each tensor lands in a fresh, 64-byte aligned CPU tensor its caller owns, so the
    process's resident memory is what it keeps (a mapped file would add every page it touched). Use as a context
    manager or `close()`. Raises SafetensorsHeaderError for a bad header or a file cut short."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        header = read_header(self.path)
        self.metadata: dict[str, str] = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
        self.entries: dict[str, dict[str, Any]] = {k: v for k, v in header.items() if k != "__metadata__"}
        self._file = open(self.path, "rb")
        (header_len,) = struct.unpack("<Q", self._file.read(8))
        self._data_start = 8 + header_len

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def spec(self, key: str) -> torch.Tensor:
        """A meta tensor with the dtype and shape of tensor `key` (nothing read)."""
        entry = self.entries[key]
        return torch.empty(entry["shape"], dtype=self._dtype(key), device="meta")

    def _dtype(self, key: str) -> torch.dtype:
        name = self.entries[key]["dtype"]
        if name not in NAMED_DTYPES:
            raise SafetensorsHeaderError(f"tensor {key!r} has dtype {name}, which torch cannot hold")
        return NAMED_DTYPES[name]

    def read(self, key: str) -> torch.Tensor:
        """Tensor `key`, read now into memory of its own."""
        entry = self.entries[key]
        start, end = entry["data_offsets"]
        buffer = torch.empty(end - start, dtype=torch.uint8)
        if end > start:
            self._file.seek(self._data_start + start)
            got = self._file.readinto(memoryview(buffer.numpy()))
            if got != end - start:
                raise SafetensorsHeaderError(f"tensor {key!r}: file ends after {got} of its {end - start} bytes")
        return buffer.view(self._dtype(key)).reshape(entry["shape"])

    def read_all(self) -> dict[str, torch.Tensor]:
        """Every tensor, in file order (one pass over the file)."""
        order = sorted(self.entries, key=lambda k: self.entries[k]["data_offsets"][0])
        return {key: self.read(key) for key in order}


def write_safetensors(path: str | os.PathLike[str], tensors: Mapping[str, torch.Tensor],
                      metadata: Mapping[str, str] | None = None) -> Path:
    """Write `tensors` (any device, any layout) and `metadata` as a safetensors file at `path`, atomically (temporary
    file + rename, mode of the file replaced or the umask default) and deterministically (see the module docstring)."""
    return write_safetensors_stream(path, tensors, tensors.__getitem__, metadata)


def write_safetensors_stream(path: str | os.PathLike[str], specs: Mapping[str, torch.Tensor],
                             produce: Callable[[str], torch.Tensor],
                             metadata: Mapping[str, str] | None = None) -> Path:
    """`write_safetensors` for tensors made one at a time: `specs` gives each tensor's dtype and shape (meta tensors
    will do), `produce(name)` its values, called once per tensor in payload order and dropped once written, so the
    memory held is one tensor at a time. ValueError when a produced tensor's dtype or shape differs from its spec."""
    head, order = encode_header(specs, metadata)
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        handle.write(head)
        for name in order:
            tensor = produce(name)
            spec = specs[name]
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != tuple(spec.shape):
                raise ValueError(f"tensor {name!r}: produced {tensor.dtype}{tuple(tensor.shape)}, "
                                 f"header says {spec.dtype}{tuple(spec.shape)}")
            data = tensor.detach().to("cpu").contiguous().reshape(-1)
            if data.numel():
                handle.write(memoryview(data.view(torch.uint8).numpy()))
            del tensor, data
        handle.flush()
        os.fsync(handle.fileno())
    return target
