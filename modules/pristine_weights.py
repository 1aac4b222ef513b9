"""Pristine weights read back from the loaded checkpoint's own file, memory-mapped, instead of copies held in RAM.

A model loaded from `.safetensors` files keeps, per parameter, where its pristine value lies in the file: the file, the
tensor's key, and the transform from the file's form to the parameter's (`checkpoint_convert.ldm_tensor_to_model`:
OpenCLIP q/k/v split, transpose, reshape). `PristineWeights.view(param)` returns that value as a zero-copy, read-only
CPU tensor over the memory-mapped file (the OS page cache): nothing is allocated, and pages the OS drops are read
again from disk when needed. The LoRA patcher restores layers from these views instead of holding backup copies.

Identity established at load, so a first LoRA apply reads nothing: the loader, which reads every byte anyway, records
per parameter (`mark_identical`) that the tensor in memory equals its view bit for bit (single files by construction:
the parameter *is* the file's tensor through the same transform and cast the view goes through; diffusers folders by
one comparison while the file is hot in the page cache) together with max|W0| (the patcher's overflow bound). On a
layer's first use `identical(param, tensor)` answers from that record without reading the weight: the same storage
(`data_ptr`) and no in-place write since (torch's version counter, which every write through the parameter or a
`detach()` of it bumps), plus a strided sample of `SAMPLE_ELEMENTS` values equal to the file's (which catches the rare
write through `.data`, which bypasses the counter). Anything else falls back to a full comparison (and a copy when it
fails), as before. After restoring a layer from the file the patcher records the identity again (`mark_identical`).

Safety: the files stay open and mapped while the model is loaded, so a checkpoint replaced by rename (every atomic
writer, ours included) or deleted keeps its old content for us. A file rewritten *in place* would change under the
map (and shrinking it would make reads fault), so each `view` first compares the file's size, mtime and inode with
those at mapping time and refuses (`None`) once they differ; the patcher then says the checkpoint must be reloaded.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.checkpoint_convert import ldm_tensor_to_model
from modules.safetensors_header import read_header

log = logging.getLogger(__name__)

TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _identity(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    """Which file, which version: a rewrite in place that restores the mtime still changes the ctime. A file
    replaced by a rename (nlink 0: no path reaches it, the mapped bytes cannot change through one) has its ctime
    changed by the unlink alone, so its ctime is not compared (-1)."""
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns if stat.st_nlink else -1


class MappedSafetensors:
    """One `.safetensors` file, open and memory-mapped read-only; tensors are served as zero-copy views."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        header = read_header(self.path)  # validated: offsets inside the payload, sizes match dtypes and shapes
        self._file = open(self.path, "rb")  # stays open while the model is loaded
        try:
            self._identity = _identity(os.fstat(self._file.fileno()))
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            self._file.close()
            raise
        # Closed when the model that holds this object is dropped (the map keeps its own descriptor; views taken from
        # it keep the map alive).
        weakref.finalize(self, self._file.close)
        (header_len,) = struct.unpack("<Q", self._map[:8])
        self._data_start = 8 + header_len
        self.entries: dict[str, dict[str, Any]] = {k: v for k, v in header.items() if k != "__metadata__"}

    def unchanged(self) -> bool:
        """True while the file on disk is still the one mapped (same inode, size, mtime and ctime)."""
        try:
            now = _identity(os.fstat(self._file.fileno()))
            return now == self._identity or now[-1] == -1 and now[:-1] == self._identity[:-1]
        except (OSError, ValueError):
            return False

    def tensor(self, key: str) -> torch.Tensor | None:
        """A read-only CPU view of tensor `key`, or None if the file lacks it or its dtype has no torch view."""
        entry = self.entries.get(key)
        dtype = TORCH_DTYPES.get(entry["dtype"]) if entry else None
        if entry is None or dtype is None:
            return None
        count = math.prod(entry["shape"])
        if count == 0:
            return torch.empty(entry["shape"], dtype=dtype)
        with warnings.catch_warnings():  # the map is read-only on purpose; torch warns that it is not writable
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(self._map, dtype=dtype, count=count,
                                    offset=self._data_start + entry["data_offsets"][0])
        return flat.view(entry["shape"])


SAMPLE_ELEMENTS = 64


def max_abs(tensor: torch.Tensor) -> float:
    """max |x| in one pass without a temporary (NaN if the tensor holds a NaN; 0 when empty)."""
    if tensor.numel() == 0:
        return 0.0
    low, high = torch.aminmax(tensor)
    return float(torch.maximum(-low, high))


def _sample(tensor: torch.Tensor, count: int = SAMPLE_ELEMENTS) -> torch.Tensor:
    """`count` elements spread evenly over a tensor (flattened), copied to the CPU."""
    flat = tensor.reshape(-1)
    if flat.numel() <= count:
        return flat.to("cpu", copy=True)
    index = torch.arange(count, device=flat.device) * (flat.numel() - 1) // (count - 1)
    return flat[index].to("cpu")


@dataclass(frozen=True)
class _Identity:
    """A parameter tensor known to equal its file view bit for bit, at one storage address and version."""

    data_ptr: int
    version: int
    amax: float


@dataclass(frozen=True)
class _Source:
    file: MappedSafetensors
    key: str
    transform: Mapping[str, Any] | None
    shape: tuple[int, ...]


class PristineWeights:
    """Where each parameter of a loaded model can be read back from its checkpoint file ("unet.<param>", ...)."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}
        self._identical: dict[str, _Identity] = {}
        self.views_read = 0  # how many `view` calls returned a tensor (the mechanism tests count reads with it)

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, param: str) -> bool:
        return param in self._sources

    def add(self, param: str, file: MappedSafetensors, key: str, shape: tuple[int, ...],
            transform: Mapping[str, Any] | None = None) -> None:
        """Record that `param` (of shape `shape`) is tensor `key` of `file` after `transform`."""
        if key in file.entries:
            self._sources[param] = _Source(file, key, transform, tuple(shape))

    def view(self, param: str) -> torch.Tensor | None:
        """The pristine value of `param` in the file's dtype, on the CPU, without a copy where the transform allows
        (a transpose copies); None when unknown or when the file changed on disk since it was mapped."""
        source = self._sources.get(param)
        if source is None:
            return None
        if not source.file.unchanged():
            log.warning("%s changed on disk while loaded: its weights can no longer be read back", source.file.path)
            return None
        tensor = source.file.tensor(source.key)
        if tensor is None:
            return None
        tensor = ldm_tensor_to_model(tensor, source.transform, source.shape)
        if tuple(tensor.shape) != source.shape:
            return None
        self.views_read += 1
        return tensor

    def mark_identical(self, param: str, tensor: torch.Tensor, amax: float | None = None) -> None:
        """Record that `tensor` (the parameter in memory) equals `view(param)` bit for bit now, with max|tensor|
        (`amax`, measured here when not given). The caller vouches for the equality (see the module docstring)."""
        if param in self._sources:
            value = max_abs(tensor) if amax is None else float(amax)
            self._identical[param] = _Identity(tensor.data_ptr(), tensor._version, value)

    def forget_identity(self, param: str) -> None:
        """Drop the record of `mark_identical` (the tensor is about to change)."""
        self._identical.pop(param, None)

    def identical(self, param: str, tensor: torch.Tensor) -> float | None:
        """max|W0| when `tensor` provably still equals the file's value (recorded at load, same storage, no tracked
        in-place write since, a strided sample equal to the file's); None when that cannot be shown without a full
        comparison. Reads at most `SAMPLE_ELEMENTS` values of the file."""
        record = self._identical.get(param)
        if record is None or tensor.data_ptr() != record.data_ptr or tensor._version != record.version:
            return None
        view = self.view(param)
        if view is None:
            return None
        want = _sample(view).to(tensor.dtype)
        if not torch.equal(_sample(tensor), want):
            return None
        return record.amax

    def mark_loaded(self, modules: Mapping[str, torch.nn.Module], compare: bool = False) -> int:
        """At load: `mark_identical` every parameter of `modules` ({"unet": module, "text_encoders.0": ...}) that has a
        source. `compare=False`: the loader built each parameter from exactly its view (identity by construction);
        `compare=True`: each is compared with its view first (e.g. a diffusers folder, whose files
        `from_pretrained` chose). Returns how many were recorded."""
        recorded = 0
        for prefix, module in modules.items():
            for name, param in module.named_parameters():
                key = f"{prefix}.{name}"
                if key not in self._sources:
                    continue
                tensor = param.detach()
                if compare:
                    view = self.view(key)
                    if view is None or not torch.equal(tensor, view.to(tensor.device, tensor.dtype)):
                        continue
                self.mark_identical(key, tensor)
                recorded += 1
        return recorded


def for_single_file(path: str | os.PathLike[str], key_map: Mapping[str, str],
                    transforms: Mapping[str, Mapping[str, Any]],
                    shapes: Mapping[str, tuple[int, ...]]) -> PristineWeights:
    """Sources for a single-file `.safetensors` checkpoint loaded through `checkpoint_convert.ldm_to_diffusers`.

    `key_map`/`transforms` as that function returns them; `shapes` = {"unet.<param>": shape, ...}."""
    weights = PristineWeights()
    mapped = MappedSafetensors(path)
    for param, key in key_map.items():
        if param in shapes:
            weights.add(param, mapped, key, shapes[param], transforms.get(param))
    return weights


def for_diffusers_folder(parts: Mapping[str, tuple[Path, torch.nn.Module]]) -> PristineWeights:
    """Sources for a diffusers folder: {"unet": (folder/unet, module), "text_encoders.0": (...), ...}; every
    `*.safetensors` in a part's folder (sharded or not) whose keys are the module's parameter names, files without
    a variant (`.fp16.`) first, as `from_pretrained` picks them. A wrong guess costs nothing: the patcher compares
    each view with the weight before trusting it."""
    weights = PristineWeights()
    for prefix, (folder, module) in parts.items():
        shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
        for file in sorted(Path(folder).glob("*.safetensors"), key=lambda f: (f.name.count("."), f.name)):
            mapped = MappedSafetensors(file)
            for key in mapped.entries:
                if key in shapes and f"{prefix}.{key}" not in weights:
                    weights.add(f"{prefix}.{key}", mapped, key, shapes[key])
    return weights
