"""Image upscalers: None, Lanczos, Nearest and every model file in the upscaler folders, by A1111 name.

`UpscalerRegistry` (the WebUI object's `upscalers`) lists what `GET /sdapi/v1/upscalers` shows and what hires fix,
img2img's "SD upscale" and Extras offer. Model upscalers are the ESRGAN family and the other super-resolution
architectures spandrel recognises (Real-ESRGAN, SwinIR, DAT, HAT, SPAN, ...), dropped as `.pth`, `.pt`, `.ckpt`
or `.safetensors` files into `models/ESRGAN`, `models/RealESRGAN`, `models/SwinIR` or `models/DAT`; the network is
built by spandrel from the file's keys (never a network written here). Pickled files are read with
`torch.load(weights_only=True)`.

`upscale(image, name, scale)` follows A1111's `Upscaler.upscale`: the target is `image size * scale` floored to a
multiple of 8; a model is applied (at most three times) until the image is at least that large, then Lanczos
resizes it to the exact target. "None" resizes with Lanczos as well (A1111: the None upscaler has no model, the
final resize does the work); Extras skips the step entirely for "None", as A1111 does. Models run in float32 on
the registry's device, in tiles of `tile` pixels (overlap `tile_overlap`) so that large images fit in memory.

spandrel imports torchvision when it starts, for two architectures that are not upscalers (LaMa inpainting,
RestoreFormer face restoration); torchvision is not a dependency of this WebUI (there is no CPU build here).
`import_spandrel` puts placeholder `torchvision` modules in `sys.modules` for the duration of that import only
(when torchvision is absent), whose functions raise a clear error if one of those two architectures ever runs.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT")
MODEL_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
BUILTIN = ("None", "Lanczos", "Nearest")
MAX_OUTPUT_SIDE = 8192
"""Largest width or height an upscale may produce (a 20000x20000 request is refused with this number)."""


class UpscalerError(ValueError):
    """An unknown upscaler name, a model file that cannot be loaded, or an output over the size cap."""


@dataclass
class UpscalerEntry:
    """One upscaler: a built-in PIL resize (`path` None) or a model file."""

    name: str
    path: Path | None = None
    folder: str = ""  # the models/ subfolder it was found in ("ESRGAN", "RealESRGAN", ...)

    @property
    def model_name(self) -> str | None:
        """A1111's `model_name`: the file stem for model upscalers, None for the built-in ones."""
        return self.path.stem if self.path is not None else None

    @property
    def scale_hint(self) -> float | None:
        """The scale written in the file name (`4x_foo`, `RealESRGAN_x4plus`), or None when the name does not say."""
        if self.path is None:
            return None
        match = re.search(r"(?:^|[^a-z0-9])(?:(\d)x|x(\d))", self.path.stem.lower())
        return float(match.group(1) or match.group(2)) if match else None


def _raise_needs_torchvision(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("this spandrel architecture needs torchvision, which this WebUI does not install")


def import_spandrel() -> types.ModuleType:
    """Import spandrel (see the module docstring for the torchvision placeholders used while it imports)."""
    if "spandrel" in sys.modules:
        return sys.modules["spandrel"]
    try:
        import torchvision  # noqa: F401, PLC0415
    except ModuleNotFoundError:
        pass
    else:
        import spandrel  # noqa: PLC0415

        return spandrel
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    placeholders = {name: types.ModuleType(name) for name in names}
    functional = placeholders["torchvision.transforms.functional"]
    functional.rotate = _raise_needs_torchvision  # type: ignore[attr-defined]
    functional.normalize = _raise_needs_torchvision  # type: ignore[attr-defined]
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear")  # type: ignore[attr-defined]
    placeholders["torchvision"].transforms = placeholders["torchvision.transforms"]  # type: ignore[attr-defined]
    placeholders["torchvision.transforms"].functional = functional  # type: ignore[attr-defined]
    sys.modules.update(placeholders)
    try:
        import spandrel  # noqa: PLC0415
    finally:
        for name in names:
            if sys.modules.get(name) is placeholders[name]:
                del sys.modules[name]
    return spandrel


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file: safetensors directly, pickles with `weights_only=True` only."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file  # noqa: PLC0415

        return load_file(str(path), device="cpu")
    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict):
        raise UpscalerError(f"{path.name}: not a state dict")
    return data


def load_model(path: Path, device: torch.device) -> Any:
    """A spandrel `ImageModelDescriptor` for the model file at `path`, in float32 on `device`, in eval mode."""
    spandrel = import_spandrel()
    state_dict = spandrel.canonicalize_state_dict(load_state_dict(path))
    try:
        descriptor = spandrel.MAIN_REGISTRY.load(state_dict)
    except spandrel.UnsupportedModelError as exc:
        raise UpscalerError(f"{path.name}: not an upscaler model spandrel recognises ({exc})") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise UpscalerError(f"{path.name}: a {type(descriptor).__name__}, not an image upscaler")
    return descriptor.to(device).to(torch.float32).eval()


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] from an RGB image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """An RGB image from (1, 3, H, W) in [0, 1] (rounded to the nearest 8-bit value)."""
    array = (tensor[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(array, "RGB")


@torch.no_grad()
def run_model_tiled(model: Any, image: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Apply `model` (input (1, C, H, W) -> (1, C, H*s, W*s)) tile by tile.

    Each tile of at most `tile` x `tile` pixels is taken with `overlap` extra pixels of context on every side
    that has a neighbour, run through the model, and only its core (without the context) is pasted into the
    output, so seams see the same receptive field as the whole image would (exact for receptive fields within
    `overlap`). An image no larger than one tile is run in one call.
    """
    _, channels, height, width = image.shape
    scale = int(model.scale)
    device = next(model.model.parameters()).device
    if height <= tile and width <= tile:
        return model(image.to(device)).cpu()
    out = torch.zeros((1, channels, height * scale, width * scale), dtype=torch.float32)
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            y0, x0 = max(y - overlap, 0), max(x - overlap, 0)
            y1, x1 = min(y + tile + overlap, height), min(x + tile + overlap, width)
            result = model(image[:, :, y0:y1, x0:x1].to(device)).cpu()
            core_h, core_w = min(tile, height - y), min(tile, width - x)
            oy, ox = (y - y0) * scale, (x - x0) * scale
            out[:, :, y * scale:(y + core_h) * scale, x * scale:(x + core_w) * scale] = \
                result[:, :, oy:oy + core_h * scale, ox:ox + core_w * scale]
    return out


def target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    """A1111's upscale target: the scaled size floored to a multiple of 8 (at least 8)."""
    return max(int(image.width * scale // 8 * 8), 8), max(int(image.height * scale // 8 * 8), 8)


def check_output_size(width: int, height: int) -> None:
    """UpscalerError when an output would exceed `MAX_OUTPUT_SIDE` on a side."""
    if width > MAX_OUTPUT_SIDE or height > MAX_OUTPUT_SIDE or width < 1 or height < 1:
        raise UpscalerError(f"upscaled size {width}x{height} is outside 1..{MAX_OUTPUT_SIDE} pixels per side")


@dataclass
class UpscalerRegistry:
    """The upscalers found under `models_dir` (see the module docstring), and the one loaded model."""

    models_dir: Path | None = None  # None: the built-in upscalers only
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    tile: int = 192
    tile_overlap: int = 16
    _entries: list[UpscalerEntry] | None = field(default=None, init=False, repr=False)
    _loaded: tuple[Path, float, Any] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def folders(self) -> list[Path]:
        """The folders scanned for model files."""
        return [] if self.models_dir is None else [self.models_dir / name for name in MODEL_FOLDERS]

    def refresh(self) -> None:
        """Rescan the folders; the loaded model is dropped if its file is gone."""
        entries = [UpscalerEntry(name) for name in BUILTIN]
        taken = {name.lower() for name in BUILTIN}
        for folder in self.folders():
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() not in MODEL_SUFFIXES or not path.is_file():
                    continue
                name = path.stem
                if name.lower() in taken:  # the same stem in two folders: the folder names it apart
                    name = f"{path.parent.name}/{path.stem}"
                taken.add(name.lower())
                entries.append(UpscalerEntry(name, path=path, folder=folder.name))
        self._entries = entries
        if self._loaded is not None and not self._loaded[0].is_file():
            self._loaded = None

    def entries(self) -> list[UpscalerEntry]:
        """Every upscaler, built-in ones first (scanned on first use)."""
        if self._entries is None:
            self.refresh()
        assert self._entries is not None
        return list(self._entries)

    def names(self) -> list[str]:
        """The upscaler names, as requests spell them."""
        return [entry.name for entry in self.entries()]

    def find(self, name: str) -> UpscalerEntry:
        """The upscaler called `name` (case-insensitive; a model's file name with its suffix works too)."""
        wanted = str(name).strip().lower()
        for entry in self.entries():
            if entry.name.lower() == wanted or (entry.path is not None and entry.path.name.lower() == wanted):
                return entry
        raise UpscalerError(f"unknown upscaler {name!r}; valid upscalers: {', '.join(self.names())}")

    def by_index_or_name(self, value: int | str) -> UpscalerEntry:
        """A1111 scripts name an upscaler by its index in the list or by its name."""
        if isinstance(value, int) and not isinstance(value, bool):
            entries = self.entries()
            if not 0 <= value < len(entries):
                raise UpscalerError(f"upscaler index {value} out of range 0..{len(entries) - 1}; "
                                    f"valid upscalers: {', '.join(self.names())}")
            return entries[value]
        return self.find(str(value))

    def model_for(self, entry: UpscalerEntry) -> Any:
        """The spandrel model of a model upscaler, loaded once and kept until another one is asked for."""
        assert entry.path is not None
        mtime = entry.path.stat().st_mtime
        with self._lock:
            if self._loaded is None or self._loaded[0] != entry.path or self._loaded[1] != mtime:
                log.info("loading upscaler %s from %s", entry.name, entry.path)
                try:
                    model = load_model(entry.path, self.device)
                except UpscalerError:
                    raise
                except Exception as exc:  # a corrupt or foreign file: torch/safetensors raise many kinds
                    raise UpscalerError(f"upscaler {entry.name!r} could not be loaded: {exc}") from exc
                self._loaded = (entry.path, mtime, model)
            return self._loaded[2]

    def upscale(self, image: Image.Image, name: str, scale: float) -> Image.Image:
        """`image` upscaled by `scale` with upscaler `name` (A1111's rules, see the module docstring)."""
        entry = self.find(name)
        width, height = target_size(image, scale)
        return self.upscale_to(image, entry, width, height)

    def upscale_to(self, image: Image.Image, entry: UpscalerEntry, width: int, height: int) -> Image.Image:
        """`image` brought to exactly `width` x `height` with `entry` (model passes, then Lanczos)."""
        check_output_size(width, height)
        image = image.convert("RGB")
        if entry.name == "Nearest":
            return image.resize((width, height), Image.Resampling.NEAREST)
        if entry.path is not None:
            model = self.model_for(entry)
            for _ in range(3):
                if image.width >= width and image.height >= height:
                    break
                check_output_size(image.width * int(model.scale), image.height * int(model.scale))
                before = image.size
                image = tensor_to_pil(run_model_tiled(model, pil_to_tensor(image), self.tile, self.tile_overlap))
                if image.size == before:  # a 1x model (restoration): one pass is all it does
                    break
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image
