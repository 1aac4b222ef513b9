"""Reading LoRA files safely: the safetensors header (validated before any tensor is touched), the metadata, and
the tensors (memory-mapped for safetensors; `.pt`/`.ckpt` only through `torch.load(weights_only=True)`).

Every problem raises `LoraFileError` with a message that names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from modules.safetensors_header import SafetensorsHeaderError, read_header

from ..errors import FormatError

LORA_EXTENSIONS = (".safetensors", ".pt", ".ckpt")


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


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file on the CPU.

    safetensors: header validated first, then memory-mapped. `.pt`/`.ckpt`: `torch.load(weights_only=True)`, so a pickle
    that names any global outside torch's allow-list is refused (the message names that global); a top-level
    `state_dict` is unwrapped.
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
    return tensors
