"""Forge's "VAE / Text Encoder" selection: the option `forge_additional_modules` and what it does to the loaded model.

The selection is a list of `.safetensors` files under `models/VAE/` and `models/text_encoder/`, stored as names
relative to the models folder (`VAE/ae.safetensors`, `text_encoder/clip_l.safetensors`). Accepted on input, as
Forge's clients send them: that relative name, an absolute path inside one of the two folders (what Forge stores),
or a bare file name found once in them. Anything else (a path outside the folders, `..` traversal, a missing file,
another suffix, a name found twice) is refused with a ValueError naming the entry; the options store turns it into
a 422 (`modules.options.OptionInfo.validate`). Containment is checked on the normalised path, not the resolved one,
so a file that is a symlink into a shared model store is accepted.

Effect (`apply`):
* Flux single files: the selected files win for their kind (CLIP-L, T5, 16-channel VAE) over bundled and
  automatically found ones (`modules.flux_model.selected_components`); a change reloads the current model, and a
  model that fails to load with the new selection stays as it was.
* SD 1/2/XL: the first selected VAE file whose latent channels fit the model's VAE is applied as a `sd_vae` file
  would be (`modules.sd_vae.VaeManager.resolve`); text encoders and VAEs of other shapes (Flux's) are not used by
  SD models.
* Flux diffusers folders carry all their parts and do not use the selection.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from modules import flux_model, regular_files

log = logging.getLogger(__name__)

OPTION = "forge_additional_modules"
FOLDERS = (flux_model.VAE_DIR, flux_model.TEXT_ENCODER_DIR)  # Forge's folders, under the models folder
SUFFIX = ".safetensors"


def list_module_files(models_dir: Path) -> list[str]:
    """Relative names (`VAE/ae.safetensors`, ...) of every `.safetensors` file under the two folders, sorted per
    folder by name (hidden entries and non-regular files skipped)."""
    names: list[str] = []
    for folder in FOLDERS:
        root = Path(models_dir) / folder
        if not root.is_dir():
            continue
        found = []
        for here, dirs, files in regular_files.walk(root, sort_key=str):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                path = Path(here) / name
                if not name.startswith(".") and name.lower().endswith(SUFFIX) and path.is_file():
                    found.append(path.relative_to(models_dir).as_posix())
        names.extend(sorted(found, key=str.lower))
    return names


def _inside(path: Path, models_dir: Path) -> str | None:
    """`path`'s name relative to `models_dir` when it lies in one of the two folders (lexically), else None."""
    try:
        relative = path.relative_to(models_dir)
    except ValueError:
        return None
    parts = relative.parts
    return relative.as_posix() if len(parts) >= 2 and parts[0] in FOLDERS else None


def normalise(models_dir: Path, entry: str) -> str:
    """The relative name of one selection entry (see the module docstring); ValueError naming it."""
    models_dir = Path(os.path.normpath(Path(models_dir).absolute()))
    text = str(entry).strip()
    where = f"models/{FOLDERS[0]}/ or models/{FOLDERS[1]}/"
    if not text or "\x00" in text:
        raise ValueError(f"option {OPTION!r}: {entry!r} is not a file name")
    candidate = Path(text)
    if not candidate.is_absolute() and len(candidate.parts) == 1:  # a bare file name, as Forge's dropdown shows
        matches = [name for name in list_module_files(models_dir) if Path(name).name == text]
        if len(matches) > 1:
            raise ValueError(f"option {OPTION!r}: {text!r} is ambiguous ({', '.join(matches)}); give the folder")
        if matches:
            return matches[0]
        raise ValueError(f"option {OPTION!r}: {text!r} not found in {where}")
    lexical = Path(os.path.normpath(candidate if candidate.is_absolute() else models_dir / candidate))
    relative = _inside(lexical, models_dir)
    if relative is None:
        raise ValueError(f"option {OPTION!r}: {text!r} is not inside {where}")
    if lexical.suffix.lower() != SUFFIX:
        raise ValueError(f"option {OPTION!r}: {text!r} is not a {SUFFIX} file")
    if not lexical.is_file():
        raise ValueError(f"option {OPTION!r}: {text!r} not found in {where}")
    return relative


def normaliser(models_dir: Path) -> Any:
    """The option's `validate` hook: every entry normalised, duplicates dropped (first kept)."""
    def validate(entries: Iterable[Any]) -> list[str]:
        out: list[str] = []
        for entry in entries:
            name = normalise(models_dir, str(entry))
            if name not in out:
                out.append(name)
        return out

    return validate


def stored_selection(options: Any) -> list[str]:
    """The selection stored in `options` (relative names); [] where the option is not registered."""
    try:
        return list(options.get(OPTION) or [])
    except KeyError:
        return []


def selected_paths(models_dir: Path, names: Sequence[str] | None) -> list[Path]:
    """The files of a stored selection (relative names), in order."""
    return [Path(models_dir) / name for name in names or ()]


def register(webui: Any) -> None:
    """Register `forge_additional_modules` (Forge's key, label and list form) on `webui.options`."""
    webui.options.add(OPTION, [], "VAE / Text Encoder", "Stable Diffusion",
                      comment="files from models/VAE and models/text_encoder: for Flux they replace the CLIP-L, T5 "
                              "or VAE found automatically; for SD models a fitting VAE acts as the SD VAE",
                      validate=normaliser(webui.paths.models_dir))


def apply(webui: Any, names: Sequence[str] | None) -> None:
    """Make the loaded model use the selection `names` (relative names). Flux single file: reloaded when its files
    change (`ModelManager.apply_modules`, ModelLoadError leaves it as it was); SD: its VAE re-resolved
    (`VaeManager.apply`, VaeLoadError leaves it as it was). The caller holds the queue lock."""
    current = webui.models.current if webui.models is not None else None
    if current is None:
        return
    if current.is_flux:
        webui.models.apply_modules(list(names or ()))
    elif webui.vae is not None:
        webui.vae.apply(current, modules=list(names or ()))


def connect(webui: Any) -> None:
    """Apply the selection whenever the option changes (`options.set`, e.g. a request's `override_settings`); on
    failure the option is put back (unsaved) and the error raised. `POST /options` applies before setting
    (`modules.api.api.apply_options`), so this is then a no-op."""
    info = webui.options.infos[OPTION]
    applied = {"value": list(webui.options.get(OPTION))}

    def changed(value: Any) -> None:
        try:
            apply(webui, value)
        except Exception:
            hook, info.onchange = info.onchange, None
            try:
                webui.options.set(OPTION, applied["value"], save=False)
            finally:
                info.onchange = hook
            raise
        applied["value"] = list(value)

    info.onchange = changed
