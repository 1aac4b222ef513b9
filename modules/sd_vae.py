"""Separate VAE files (A1111's `models/VAE`) and the `sd_vae` option.

Files: `.safetensors`, `.pt`, `.ckpt` (pickles loaded with `weights_only=True`) under the VAE folder (`--vae-dir`,
default `models/VAE`, searched recursively) plus `*.vae.safetensors|pt|ckpt` beside the checkpoints, as A1111
lists them. Names are the file names (A1111's `model_name`). Both key layouts load: A1111's single-file VAE layout
(`encoder.down.0.block.0.conv1.weight`, optionally under `first_stage_model.`), converted with the checkpoint
converter's VAE map (`modules.checkpoint_convert.vae_key_map`), and diffusers' AutoencoderKL names.

Selection (`sd_vae`, A1111's `resolve_vae`):
* "Automatic": a VAE file whose name without extension is the checkpoint's (`model.safetensors` in the VAE folder,
  or `model.vae.pt` beside `model.ckpt`), else the checkpoint's own VAE. (A1111 takes any VAE whose name merely
  starts with the checkpoint's; an exact match keeps `sd15` from picking `sd15-anime-vae` by accident.)
* "None": the checkpoint's own VAE.
* a file name: that file; with `sd_vae_overrides_per_model_preferences` off, a file named like the checkpoint
  still wins. A name that is not found falls back to the checkpoint's own VAE with a warning (as A1111); the API
  refuses unknown names up front (422).
* Forge's "VAE / Text Encoder" selection (`forge_additional_modules`, `modules.forge_modules`) wins over all of
  these for SD models: its first VAE file whose latent channels fit the model's VAE is applied (Forge has no
  `sd_vae` and applies the picked VAE to every model). Flux models take their VAE from the selection when they load
  (`modules.flux_model`), not here.

Swapping writes the file's tensors into the loaded VAE's parameters in place (same module objects, so everything
holding the model keeps working). The checkpoint's own VAE weights are copied aside (on the CPU: the VAE's size,
about 335 MB for SD's float32 VAE, held only while another VAE is applied) before the first swap and copied back
for "None", so restoring is bitwise exact. A file that cannot be read or does not fit the model's VAE raises
`VaeLoadError` naming the file and the cause before any weight is touched: the model is unchanged.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules import checkpoint_convert, hashes
from modules.sd_model_types import LoadedModel

log = logging.getLogger(__name__)

VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
AUTOMATIC = "Automatic"
NONE = "None"
LDM_PREFIX = "first_stage_model."
IGNORED_PREFIXES = ("loss.", "model_ema.")


class VaeLoadError(ValueError):
    """A VAE file could not be read or does not fit the loaded model's VAE."""


@dataclass(frozen=True)
class VaeFile:
    """One VAE file: `name` (its file name, A1111's `model_name`) and `path`."""

    name: str
    path: Path

    @property
    def stem(self) -> str:
        """The name without extension and without a `.vae` suffix ("model.vae.pt" -> "model")."""
        stem = self.name.rsplit(".", 1)[0]
        return stem[:-4] if stem.lower().endswith(".vae") else stem


def scan_vae_files(vae_dir: Path, ckpt_dir: Path | None) -> list[VaeFile]:
    """VAE files in `vae_dir` (recursive) and `*.vae.*` files in `ckpt_dir`; hidden entries skipped; by name."""
    found: dict[str, VaeFile] = {}

    def walk(root: Path, beside_checkpoints: bool) -> None:
        if not root.is_dir():
            return
        for folder, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                lower = name.lower()
                if name.startswith(".") or not lower.endswith(VAE_SUFFIXES):
                    continue
                if beside_checkpoints and ".vae." not in lower:
                    continue
                found.setdefault(name, VaeFile(name, Path(folder) / name))

    walk(vae_dir, beside_checkpoints=False)
    if ckpt_dir is not None:
        walk(ckpt_dir, beside_checkpoints=True)
    return sorted(found.values(), key=lambda f: f.name.lower())


def read_vae_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a VAE file, keys without `first_stage_model.`, loss/EMA entries dropped; VaeLoadError."""
    from modules.sd_models import ModelLoadError, read_state_dict  # noqa: PLC0415 - one reader for weight files

    try:
        state, _ = read_state_dict(path)
    except ModelLoadError as exc:
        raise VaeLoadError(f"VAE {path.name}: {exc}") from exc
    cleaned = {}
    for key, tensor in state.items():
        key = key.removeprefix(LDM_PREFIX)
        if not key.startswith(IGNORED_PREFIXES):
            cleaned[key] = tensor
    return cleaned


def convert_vae_state_dict(state: dict[str, torch.Tensor], vae: torch.nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The file's tensors under `vae`'s own parameter names, shapes checked: diffusers names are used as they are,
    A1111/LDM names are converted. VaeLoadError naming the first missing or mis-shaped tensor."""
    expected = {key: tuple(t.shape) for key, t in vae.state_dict().items()}
    if all(key in state for key in expected):
        converted = {key: state[key] for key in expected}
    else:
        try:
            prefixed_map, prefixed_transforms = checkpoint_convert.vae_key_map(vae.config, expected, "")
            key_map = {param.removeprefix("vae."): ldm for param, ldm in prefixed_map.items()}
            transforms = {param.removeprefix("vae."): t for param, t in prefixed_transforms.items()}
        except checkpoint_convert.CheckpointConversionError as exc:
            raise VaeLoadError(f"VAE {name}: {exc}") from exc
        missing = [ldm for ldm in key_map.values() if ldm not in state]
        if missing:
            raise VaeLoadError(f"VAE {name}: not a VAE for this model: {len(missing)} of {len(key_map)} tensors "
                               f"missing (e.g. {missing[0]!r})")
        converted = {param: checkpoint_convert.ldm_tensor_to_model(state[ldm], transforms.get(param), expected[param])
                     for param, ldm in key_map.items()}
    for key, shape in expected.items():
        if tuple(converted[key].shape) != shape:
            raise VaeLoadError(f"VAE {name}: tensor for {key} has shape {tuple(converted[key].shape)}, the model's "
                               f"VAE needs {shape} (a VAE made for another model family?)")
        if not converted[key].is_floating_point():
            raise VaeLoadError(f"VAE {name}: tensor for {key} is {converted[key].dtype}, not floating point")
    return converted


class VaeManager:
    """The VAE files found, the `sd_vae` selection and what is applied to the loaded model."""

    def __init__(self, vae_dir: Path, ckpt_dir: Path | None, options: Any, cache: Any = None,
                 models_dir: Path | None = None) -> None:
        self.vae_dir = Path(vae_dir)
        self.models_dir = Path(models_dir) if models_dir is not None else None  # where the Forge selection lives
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.options = options
        self.cache = cache
        self._lock = threading.RLock()
        self._files: list[VaeFile] = scan_vae_files(self.vae_dir, self.ckpt_dir)
        # The model the state below belongs to, held weakly: an unloaded model is freed, its VAE copies with it.
        self._model: weakref.ref[LoadedModel] | None = None
        self._applied: VaeFile | None = None  # None: the checkpoint's own VAE
        self._original: dict[str, torch.Tensor] | None = None  # the checkpoint's own VAE weights (CPU copies)

    # -- files -----------------------------------------------------------------------------------------------

    def refresh(self) -> list[VaeFile]:
        """Scan the folders again."""
        files = scan_vae_files(self.vae_dir, self.ckpt_dir)
        with self._lock:
            self._files = files
        return list(files)

    def files(self) -> list[VaeFile]:
        with self._lock:
            return list(self._files)

    def choices(self) -> list[str]:
        """The `sd_vae` values: Automatic, None and every file name."""
        return [AUTOMATIC, NONE, *(f.name for f in self.files())]

    def find(self, name: str) -> VaeFile | None:
        """A file by name (or name without extension)."""
        for file in self.files():
            if name in (file.name, file.name.rsplit(".", 1)[0]):
                return file
        return None

    def near_checkpoint(self, model: LoadedModel) -> VaeFile | None:
        """The VAE file named like the model's checkpoint, if any."""
        name = Path(model.checkpoint.name).name
        stem = name.rsplit(".", 1)[0] if model.checkpoint.format == "single-file" else name
        return next((f for f in self.files() if f.stem == stem), None)

    # -- selection -------------------------------------------------------------------------------------------

    def picked(self, model: LoadedModel, modules: list[str] | None = None) -> VaeFile | None:
        """The first VAE file of the "VAE / Text Encoder" selection (`modules`, default: the option's) whose latent
        channels fit `model`'s VAE; None when there is none (or for Flux, which uses the selection when it loads)."""
        from modules import flux_model, forge_modules  # noqa: PLC0415

        if self.models_dir is None or model.is_flux:
            return None
        if modules is None:
            modules = forge_modules.stored_selection(self.options)
        latent = int(getattr(model.vae.config, "latent_channels", 4))
        for name, path in zip(modules, forge_modules.selected_paths(self.models_dir, modules)):
            if name.startswith(f"{forge_modules.FOLDERS[0]}/") and flux_model.vae_latent_channels(path) == latent:
                return VaeFile(path.name, path)
        return None

    def resolve(self, model: LoadedModel, selection: str | None = None,
                modules: list[str] | None = None) -> VaeFile | None:
        """The file `selection` (default: the `sd_vae` option) means for `model`, after the "VAE / Text Encoder"
        pick (`picked`, with `modules`); None = the checkpoint's own."""
        picked = self.picked(model, modules)
        if picked is not None:
            return picked
        selection = str(self.options.get("sd_vae") if selection is None else selection) or AUTOMATIC
        near = self.near_checkpoint(model)
        overrides = bool(self.options.get("sd_vae_overrides_per_model_preferences"))
        if near is not None and (not overrides or selection == AUTOMATIC):
            return near
        if selection in (AUTOMATIC, NONE):
            return None
        found = self.find(selection)
        if found is None:
            log.warning("VAE %r not found in %s; using the checkpoint's own VAE", selection, self.vae_dir)
        return found

    def apply(self, model: LoadedModel | None, selection: str | None = None,
              modules: list[str] | None = None) -> VaeFile | None:
        """Make `model`'s VAE the one `selection` (and the "VAE / Text Encoder" `modules`, see `resolve`) means
        (no-op when it already is); returns the file applied (None: the checkpoint's own). VaeLoadError leaves the
        model's VAE as it was. The caller holds the generation lock (weights change)."""
        if model is None:
            return None
        with self._lock:
            if not self._is_current(model):  # another model: its VAE is its checkpoint's own
                self._model, self._applied, self._original = weakref.ref(model), None, None
            wanted = self.resolve(model, selection, modules)
            if wanted == self._applied:
                return wanted
            if wanted is None:
                self._restore(model)
                return None
            weights = convert_vae_state_dict(read_vae_state_dict(wanted.path), model.vae, wanted.name)
            if self._original is None:
                self._original = {k: t.detach().to("cpu", copy=True) for k, t in model.vae.state_dict().items()}
            self._write(model, weights)
            self._applied = wanted
            log.info("VAE %s applied to %s", wanted.name, model.checkpoint.name)
            return wanted

    def on_model_loaded(self, model: LoadedModel) -> None:
        """`model_loaded` callback: apply the selected VAE to the new model (a failure is logged; the checkpoint's
        own VAE stays)."""
        try:
            self.apply(model)
        except VaeLoadError as exc:
            log.error("%s; using the checkpoint's own VAE", exc)

    def _restore(self, model: LoadedModel) -> None:
        if self._original is not None:
            self._write(model, self._original)
            log.info("VAE of %s restored to the checkpoint's own", model.checkpoint.name)
        self._applied, self._original = None, None

    @staticmethod
    @torch.no_grad()
    def _write(model: LoadedModel, weights: dict[str, torch.Tensor]) -> None:
        state = model.vae.state_dict()
        for key, target in state.items():
            target.copy_(weights[key].to(device=target.device, dtype=target.dtype))

    # -- what the infotext and the API report ----------------------------------------------------------------

    def applied(self, model: LoadedModel | None) -> VaeFile | None:
        """The VAE file applied to `model` now (None: its checkpoint's own VAE)."""
        with self._lock:
            return self._applied if model is not None and self._is_current(model) else None

    def _is_current(self, model: LoadedModel) -> bool:
        return self._model is not None and self._model() is model

    def file_hash(self, file: VaeFile) -> str:
        """A1111's `VAE hash`: the first 10 hex digits of the whole file's SHA-256 (cached in cache.json)."""
        value = hashes.file_hash(file.path, self.cache, whole_file=True)
        if self.cache is not None:
            self.cache.save()
        return value[:10]

    def infotext_fields(self, model: LoadedModel | None, add_name: bool = True, add_hash: bool = True
                        ) -> dict[str, str | None]:
        """`{"VAE hash": ..., "VAE": ...}` as A1111 writes them: the first 10 hex digits of the file's SHA-256 and the
        file name with its extension (both None with the checkpoint's own VAE)."""
        file = self.applied(model)
        if file is None:
            return {"VAE hash": None, "VAE": None}
        return {"VAE hash": self.file_hash(file) if add_hash else None,
                "VAE": file.name if add_name else None}
