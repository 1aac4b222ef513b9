"""Reading LoRA files safely: the safetensors header (validated before any tensor is touched), the metadata, and
the tensors (memory-mapped for safetensors; `.pt`/`.ckpt` only through `torch.load(weights_only=True)`).

Every problem raises `LoraFileError` with a message that names the file and what is wrong with it.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from modules import safe_json
from modules.regular_files import NotRegularFileError, check_regular, open_regular
from modules.safetensors_header import SafetensorsHeaderError, read_header

from ..errors import FormatError

log = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
# A file whose real allocated size is under this share of the tensor bytes its header claims is sparse (holes read as
# zeros): refused before reading, since loading it would allocate every claimed byte (2 GB for a 4 KB file).
MIN_ALLOCATED_SHARE = 0.25
SPARSE_CHECK_FROM = 16 * 1024 * 1024  # smaller payloads cost little even when sparse
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class FileVersion(NamedTuple):
    """One version of a LoRA file, from one stat: the key of every per-file cache (engine, diffusers method, API)."""

    filename: str
    mtime: float
    size: int

    @classmethod
    def of(cls, filename: str) -> FileVersion:
        """The version on disk now (raises OSError when the file cannot be stat'ed)."""
        st = os.stat(filename)
        return cls(filename, st.st_mtime, st.st_size)


class LoraFileError(FormatError):
    """A LoRA file that cannot be read; the message names the file and the problem."""


def read_safetensors_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated JSON header of a safetensors file (`modules.safetensors_header.read_header`); problems raise
    LoraFileError naming the file."""
    try:
        return read_header(path)
    except SafetensorsHeaderError as exc:
        raise LoraFileError(f"{Path(path).name}: {exc}") from exc


def decode_metadata(raw: dict[str, Any]) -> dict[str, Any]:
    """safetensors `__metadata__` values are strings; those holding a JSON object are decoded (A1111 does this too)
    through the one hardened reader (`modules.safe_json`): a value it refuses (too deep, a 5,000-digit integer,
    Infinity, ...) stays the string it was, so one odd field never makes the file unreadable."""
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, str) and value.startswith("{"):
            try:
                value = safe_json.loads(value)
            except safe_json.JsonError as exc:
                log.info("metadata field %r kept as text: it %s", key, exc)
        decoded[key] = value
    return decoded


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The decoded `__metadata__` of a safetensors file ({} for .pt/.ckpt)."""
    if not str(path).lower().endswith(".safetensors"):
        return {}
    return decode_metadata(read_safetensors_header(path).get("__metadata__", {}) or {})


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file on the CPU.

    safetensors: header validated first, then memory-mapped. `.pt`/`.ckpt`: `torch.load(weights_only=True)`, so a pickle
    that names any global outside torch's allow-list is refused (the message names that global); a top-level
    `state_dict` is unwrapped.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        header = read_safetensors_header(path)  # regular files only: a FIFO is refused here, never opened blocking
        check_allocated(path, sum(entry["data_offsets"][1] - entry["data_offsets"][0]
                                  for key, entry in header.items() if key != "__metadata__"))
        from safetensors.torch import load_file  # noqa: PLC0415

        try:
            return upcast_fp8(path.name, load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise LoraFileError(f"{path.name}: cannot read tensors: {exc}") from None
    if path.suffix.lower() not in (".pt", ".ckpt"):
        raise LoraFileError(f"{path.name}: unsupported file type {path.suffix!r} (expected {', '.join(LORA_EXTENSIONS)})")
    try:
        handle = open_regular(path)
    except NotRegularFileError as exc:
        raise LoraFileError(f"{path.name}: {exc.strerror}") from None
    except OSError as exc:
        raise LoraFileError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    try:
        with handle:
            check_allocated(path, os.fstat(handle.fileno()).st_size)
            data = torch.load(handle, map_location="cpu", weights_only=True)
    except LoraFileError:
        raise
    except Exception as exc:
        # torch's weights_only messages advise loading with weights_only=False: the user only needs what was refused.
        text = str(exc)
        forbidden = re.search(r"GLOBAL ([\w.]+)", text)
        if forbidden:
            raise LoraFileError(f"{path.name}: refused to unpickle: the file names a forbidden global "
                                f"({forbidden.group(1)}); only tensors are loaded from .pt/.ckpt files") from exc
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        message = detail.group(1).strip() if detail else (text.splitlines()[0] if text else type(exc).__name__)
        raise LoraFileError(f"{path.name}: cannot read as a torch file: {message}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise LoraFileError(f"{path.name}: holds a {type(data).__name__}, not a dict of tensors")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise LoraFileError(f"{path.name}: holds no tensors")
    return upcast_fp8(path.name, tensors)


def check_allocated(path: Path, claimed: int) -> None:
    """Refuse a sparse file: one whose blocks on disk hold under `MIN_ALLOCATED_SHARE` of the `claimed` tensor bytes
    (see the constant). Not checked where the platform reports no block count."""
    if claimed < SPARSE_CHECK_FROM:
        return
    st = check_regular(path)
    blocks = getattr(st, "st_blocks", None)
    if blocks is None:
        return
    allocated = blocks * 512
    if allocated < claimed * MIN_ALLOCATED_SHARE:
        raise LoraFileError(f"{path.name}: its header claims {claimed} bytes of tensors but only {allocated} bytes are "
                            "stored on disk (a sparse file): refused before reading")


def upcast_fp8(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FP8 tensors (float8_e4m3fn / float8_e5m2, as some trainers save LoRAs) upcast to float32, exactly (every FP8
    value is a float32 value): the strategies and the checks compute in float32, and torch has no FP8 arithmetic on
    the CPU. Decision: upcast (with one log line) rather than refuse, since the values are exact."""
    fp8 = [key for key, tensor in tensors.items() if tensor.dtype in FP8_DTYPES]
    if fp8:
        log.info("%s: %d FP8 tensors upcast to float32", name, len(fp8))
        for key in fp8:
            tensors[key] = tensors[key].to(torch.float32)
    return tensors
