"""Checkpoint discovery and loading: A1111 single files (`.safetensors`, `.ckpt`) and diffusers folders.

* `ModelManager` (one per WebUI) lists checkpoints under `paths.ckpt_dir`, finds one by title/name/path/hash, loads
  it and keeps the current `LoadedModel`; a failed load raises `ModelLoadError` and leaves the previous model
  current. Setting the `sd_model_checkpoint` option switches the model.
* `load_checkpoint(info, device, dtype)` builds the model: single files are read (safetensors or a
  `weights_only` pickle), their family detected from the key layout, sizes inferred from the tensor shapes
  (`modules.model_configs`), names converted by `modules.checkpoint_convert` and the tensors assigned to modules
  built without random initialisation; diffusers folders load with each component's `from_pretrained`, offline.

Prediction type (epsilon vs v): in this order, (1) a sidecar `<checkpoint>.yaml` (`parameterization: "v"` means v,
a yaml without it means epsilon), (2) the safetensors metadata `modelspec.prediction_type`, (3) a `v_pred` key in the
file (NoobAI-style v-pred SDXL), (4) for SD2 only, A1111's test forward pass (UNet on 0.5-filled latents at t=999;
mean(out - x) < -1 means v), else epsilon. Diffusers folders use `scheduler/scheduler_config.json`.

Dtype: float32 on CPU (a requested float16 is replaced, fp16 matmul is very slow there), the given dtype elsewhere.
Unused tensors of a single file (EMA weights, schedule buffers...) are kept for writing the file back
(`key_map_special["extra"]`); those over 1 MiB in a `.safetensors` file are not held in memory but listed in
`key_map_special["extra_in_source"]` and re-read from `key_map_special["source"]` when written.
Pristine weights: a model loaded from `.safetensors` (single file or diffusers folder) keeps its files memory-mapped
(`LoadedModel.pristine`, `modules.pristine_weights`) so the LoRA patcher can restore layers from them without copies;
the load also records that each parameter equals its file tensor (`PristineWeights.mark_loaded`), so a LoRA's first
apply reads nothing back.
Hash: `CheckpointInfo.sha256` is the whole-file SHA-256 (A1111's checkpoint hash, Civitai's AutoV2) cached in
cache.json; it is computed when a checkpoint is loaded (listing only reuses cached values), and never for folders.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from modules import (
    checkpoint_convert,
    flux_model,
    forge_modules,
    hashes,
    model_configs,
    pristine_weights,
    regular_files,
)
from modules.cache import DiskCache
from modules.safetensors_header import SafetensorsHeaderError, SafetensorsReader, read_header
from modules.sd_model_types import CheckpointInfo, LoadedModel

log = logging.getLogger(__name__)

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
HASH_SUBSECTION = hashes.cache_subsection(whole_file=True)
_TITLE_HASH_RE = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]$")


class ModelLoadError(RuntimeError):
    """A checkpoint could not be found or loaded; the message names the file and the cause."""


# ---------------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------------

def _check_safetensors_header(path: Path) -> dict[str, Any]:
    """Validate the safetensors framing and header (`modules.safetensors_header`) and return the header."""
    try:
        return read_header(path)
    except SafetensorsHeaderError as exc:
        raise ModelLoadError(f"{path}: truncated or not a safetensors file ({exc})") from exc


ALIGNMENT = 64
LAZY_EXTRA_BYTES = 1 << 20


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, safetensors metadata) of a single-file checkpoint, on CPU in the file's dtypes.

    `.safetensors`: framing checked first, so a truncated download is reported as such; each tensor is read into
    fresh 64-byte aligned memory (`SafetensorsReader`). `.ckpt`: `torch.load`
    with `weights_only=True` (no code execution); a top-level `state_dict` entry is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint file not found")
    if path.suffix.lower() == ".safetensors":
        # Plain reads into tensors of our own (aligned), not a memory map: the load's resident memory is the weights
        # alone, not the weights plus every page of the file the reader touched.
        try:
            with SafetensorsReader(path) as reader:
                return reader.read_all(), reader.metadata
        except SafetensorsHeaderError as exc:
            raise ModelLoadError(f"{path}: truncated or not a safetensors file ({exc})") from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a loadable .ckpt checkpoint ({type(exc).__name__}: {exc})") from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ModelLoadError(f"{path}: .ckpt does not hold a state dict of tensors")
    return dict(loaded), {}


# ---------------------------------------------------------------------------------------------------------------
# Prediction type
# ---------------------------------------------------------------------------------------------------------------

def sidecar_prediction_type(path: Path) -> str | None:
    """"v_prediction"/"epsilon" from `<checkpoint>.yaml` next to the file (A1111's per-checkpoint config), or None."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    text = yaml_path.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"""parameterization\s*:\s*["']?(\w+)""", text)
    return "v_prediction" if match and match.group(1).lower() in ("v", "v_prediction") else "epsilon"


def metadata_prediction_type(metadata: Mapping[str, str]) -> str | None:
    """From safetensors metadata `modelspec.prediction_type` ("v"/"v_prediction"/"epsilon"), or None."""
    value = str(metadata.get("modelspec.prediction_type", "")).strip().lower()
    if value in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if value in ("epsilon", "eps"):
        return "epsilon"
    return None


def sd2_forward_test_is_v(unet: torch.nn.Module) -> bool:
    """A1111's SD2 test: UNet(x = 0.5, t = 999, context = 0.5); v-models give mean(out - x) < -1."""
    param = next(unet.parameters())
    cross = int(unet.config.cross_attention_dim)
    size = 8 if min(unet.config.block_out_channels) >= 128 else 16  # A1111 uses 8x8; tiny group norms need more
    x = torch.full((1, int(unet.config.in_channels), size, size), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full((1, 77, cross), 0.5, device=param.device, dtype=param.dtype)
    with torch.no_grad():
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=context).sample
    return float((out[:, :4].float() - x[:, :4].float()).mean()) < -1


# ---------------------------------------------------------------------------------------------------------------
# Building models
# ---------------------------------------------------------------------------------------------------------------

def effective_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """float32 instead of float16 on CPU; otherwise `dtype`."""
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype


def _owning(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a copy when it is a view into a larger tensor (OpenCLIP's q/k/v are chunks of one file tensor):
    views share torch's version counter, so a write to q would look like a write to k and v to
    `PristineWeights.identical`, and the three would keep the whole file tensor alive."""
    if tensor.device.type != "meta" and tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size():
        return tensor.clone()
    return tensor


def _assign(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path) -> None:
    state = {key: _owning(tensor) for key, tensor in state.items()}
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: {what} weights do not fit the model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    leftover = [name for name, p in module.named_parameters() if p.is_meta]
    if leftover:
        raise ModelLoadError(f"{path}: {what} parameters left unloaded: {leftover[:3]}")
    try:
        model_configs.materialize_buffers(module)
    except ValueError as exc:
        raise ModelLoadError(f"{path}: {what}: {exc}") from exc


def _finish(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # nn.Module.to, not diffusers' override, which warns about casting instead of from_pretrained(torch_dtype=...).
    torch.nn.Module.to(module, device=device, dtype=dtype)
    # CPU kernels pick different vectorised paths for data that is not 64-byte aligned, so an unaligned copy of the
    # same weights gives outputs that differ in the last bits (measured: 1e-6 on a tiny UNet): copy those.
    for param in module.parameters():
        if param.device.type == "cpu" and param.data_ptr() % ALIGNMENT:
            param.data = param.data.clone()
    module.eval()
    module.requires_grad_(False)
    return module


def _convert_single_file(state: Mapping[str, torch.Tensor], path: Path) -> tuple[Any, ...]:
    """Family, config, the components built on the meta device, their parameter shapes, and `ldm_to_diffusers`'
    (components, key_map, special) of a single file's state dict (real or meta tensors)."""
    try:
        family = checkpoint_convert.detect_family(state.keys())
        config = model_configs.infer_family_config(checkpoint_convert.canonical_view(state), family)
        built = model_configs.build_components(config, empty=True)
        parts = {"unet": built["unet"], "vae": built["vae"]}
        parts.update({f"text_encoders.{i}": m for i, m in enumerate(built["text_encoders"])})
        shapes = {name: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in parts.items()}
        components, key_map, special = checkpoint_convert.ldm_to_diffusers(state, family, config, shapes)
    except (ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    return family, config, built, parts, shapes, components, key_map, special


def load_layout(info: CheckpointInfo, models_dir: Path | None = None) -> LoadedModel:
    """The model of a `.safetensors` single file or a diffusers folder with every parameter on the meta device:
    module names, shapes, key map and family, no weights (nothing is read but headers and configs). Tools that
    stream a checkpoint tensor by tensor (the merge tool) resolve LoRA keys against it. `models_dir`: where a Flux
    transformer file's companions are (their headers give the text encoders' shapes). Raises ModelLoadError."""
    path = Path(info.path)
    if info.format == "diffusers":
        if flux_model.is_flux_folder(path):
            try:
                return flux_model.load_diffusers_folder(info, torch.device("meta"), torch.float32)
            except flux_model.FluxLoadError as exc:
                raise ModelLoadError(str(exc)) from exc
        return load_diffusers_folder(info, torch.device("meta"), torch.float32)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"{path}: only .safetensors checkpoints can be read without loading their weights")
    header = _check_safetensors_header(path)
    dtypes = pristine_weights.TORCH_DTYPES
    state = {key: torch.empty(entry["shape"], dtype=dtypes.get(entry["dtype"], torch.uint8), device="meta")
             for key, entry in header.items() if key != "__metadata__"}
    flux_prefix = flux_model.bfl_prefix(state.keys())
    if flux_prefix is not None:
        try:
            return flux_model.load_layout(info, state, flux_prefix, models_dir)
        except flux_model.FluxLoadError as exc:
            raise ModelLoadError(str(exc)) from exc
    from modules.tokenizer import tokenizers_for  # noqa: PLC0415 - transformers: imported when a model loads

    family, config, built, _, _, _, key_map, special = _convert_single_file(state, path)
    metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    special.update(source=str(path), metadata=metadata, extra={}, extra_in_source=list(special["extra"]))
    prediction = sidecar_prediction_type(path) or metadata_prediction_type(metadata) or "epsilon"
    return LoadedModel(
        family=family, unet=built["unet"], vae=built["vae"], text_encoders=built["text_encoders"],
        tokenizers=tokenizers_for(config), prediction_type=prediction,
        scheduler_config=checkpoint_convert.scheduler_config(family, prediction), checkpoint=info,
        device=torch.device("meta"), dtype=torch.float32, key_map=key_map, key_map_special=special,
        ldm_unet_names=checkpoint_convert.unet_ldm_module_map_for(built["unet"]), pristine=None)


def load_single_file(info: CheckpointInfo, device: torch.device, dtype: torch.dtype,
                     models_dir: Path | None = None, modules: Sequence[Path] = ()) -> LoadedModel:
    """Load an A1111/LDM single-file checkpoint (see the module docstring); Flux files go to `modules.flux_model`
    (with `modules`, the files picked in "VAE / Text Encoder")."""
    from modules.tokenizer import tokenizers_for  # noqa: PLC0415 - transformers: imported when a model loads

    path = Path(info.path)
    state, metadata = read_state_dict(path)
    flux_prefix = flux_model.bfl_prefix(state.keys())
    if flux_prefix is not None:
        return flux_model.load_single_file(info, state, flux_prefix, device, dtype, models_dir, modules)
    family, config, built, parts, shapes, components, key_map, special = _convert_single_file(state, path)
    del state
    target = effective_dtype(device, dtype)
    for name, module in parts.items():
        _assign(module, components[name], name, path)
        _finish(module, device, target)
    del components
    prediction = sidecar_prediction_type(path) or metadata_prediction_type(metadata)
    if prediction is None and "v_pred" in special["extra"]:
        prediction = "v_prediction"
    if prediction is None:
        prediction = "v_prediction" if family == "SD2" and sd2_forward_test_is_v(built["unet"]) else "epsilon"
    special["source"] = str(path)
    special["metadata"] = dict(metadata)
    pristine = None
    if path.suffix.lower() == ".safetensors":  # large unused tensors (EMA copies...) stay in the file until written
        lazy = [k for k, t in special["extra"].items() if t.numel() * t.element_size() > LAZY_EXTRA_BYTES]
        for key in lazy:
            del special["extra"][key]
        special["extra_in_source"] = lazy
        flat_shapes = {f"{part}.{k}": shape for part, part_shapes in shapes.items() for k, shape in part_shapes.items()}
        pristine = _map_pristine(lambda: pristine_weights.for_single_file(
            path, key_map, special["transforms"], flat_shapes))
        if pristine is not None:  # every parameter is its file tensor, transformed and cast the way a view is
            pristine.mark_loaded(parts)
    return LoadedModel(
        family=family, unet=built["unet"], vae=built["vae"], text_encoders=built["text_encoders"],
        tokenizers=tokenizers_for(config), prediction_type=prediction,
        scheduler_config=checkpoint_convert.scheduler_config(family, prediction), checkpoint=info,
        device=device, dtype=target, key_map=key_map, key_map_special=special,
        ldm_unet_names=checkpoint_convert.unet_ldm_module_map_for(built["unet"]), pristine=pristine)


def _map_pristine(build: Any) -> pristine_weights.PristineWeights | None:
    """The model's pristine-weight sources, or None (LoRA backups are then copies) when the files cannot be mapped."""
    try:
        return build()
    except (OSError, ValueError, SafetensorsHeaderError) as exc:
        log.warning("checkpoint weights cannot be memory-mapped (%s): LoRA backups will be copies in memory", exc)
        return None


def is_diffusers_folder(path: Path) -> bool:
    """A folder with `model_index.json` or `unet/config.json`."""
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: unreadable JSON ({exc})") from exc


def load_diffusers_folder(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load a diffusers folder offline: `unet/`, `vae/`, `text_encoder/`, `text_encoder_2/` (SDXL), tokenizers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: PLC0415

    from modules.tokenizer import SDClipTokenizer, tokenizers_for  # noqa: PLC0415

    path = Path(info.path)
    target = effective_dtype(device, dtype)
    index = _read_json(path / "model_index.json")
    encoder_dirs = [d for d in ("text_encoder", "text_encoder_2") if (path / d / "config.json").is_file()]
    for needed in ("unet", "vae"):
        if not (path / needed / "config.json").is_file():
            raise ModelLoadError(f"{path}: diffusers folder has no {needed}/config.json")
    if not encoder_dirs:
        raise ModelLoadError(f"{path}: diffusers folder has no text_encoder/config.json")
    layout = device.type == "meta"  # load_layout: modules built from their configs, no weights read

    def component(cls: Any, folder: Path) -> Any:
        return model_configs.folder_component(cls, folder, layout)

    try:
        unet = component(UNet2DConditionModel, path / "unet")
        vae = component(AutoencoderKL, path / "vae")
        encoders = []
        for folder in encoder_dirs:
            cfg = _read_json(path / folder / "config.json")
            default = "CLIPTextModelWithProjection" if folder == "text_encoder_2" else "CLIPTextModel"
            declared = index.get(folder, [None, None])[1] or (cfg.get("architectures") or [default])[0]
            cls = model_configs.text_encoder_class(declared)
            encoders.append(component(cls, path / folder))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: cannot load diffusers folder ({type(exc).__name__}: {exc})") from exc
    for module in (unet, vae, *encoders):
        if layout:
            module.eval().requires_grad_(False)
        else:
            _finish(module, device, target)
    if len(encoders) == 2:
        family = "SDXL"
    else:
        family = "SD2" if encoders[0].config.hidden_act == "gelu" else "SD1"
    family_cfg = model_configs.family_config(family)
    tokenizers = []
    for i, default_tok in enumerate(tokenizers_for(family_cfg)[:len(encoders)]):
        folder = path / ("tokenizer" if i == 0 else f"tokenizer_{i + 1}")
        tokenizers.append(SDClipTokenizer.from_pretrained(folder, local_files_only=True)
                          if (folder / "tokenizer_config.json").is_file() else default_tok)
    scheduler = _read_json(path / "scheduler" / "scheduler_config.json")
    prediction = scheduler.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ModelLoadError(f"{path}: unsupported prediction_type {prediction!r} in scheduler_config.json")
    parts = {"unet": (path / "unet", unet), "vae": (path / "vae", vae)}
    parts.update({f"text_encoders.{i}": (path / folder, module)
                  for i, (folder, module) in enumerate(zip(encoder_dirs, encoders))})
    pristine = None if layout else _map_pristine(lambda: pristine_weights.for_diffusers_folder(parts))
    if pristine is not None:  # from_pretrained chose the files: compared once here, while they are in the page cache
        pristine.mark_loaded({prefix: module for prefix, (_, module) in parts.items()}, compare=True)
    return LoadedModel(
        family=family, unet=unet, vae=vae, text_encoders=encoders, tokenizers=tokenizers, prediction_type=prediction,
        scheduler_config=checkpoint_convert.scheduler_config(family, prediction), checkpoint=info, device=device,
        dtype=target, ldm_unet_names=checkpoint_convert.unet_ldm_module_map_for(unet),
        pristine=pristine)


def load_checkpoint(info: CheckpointInfo, device: torch.device | str, dtype: torch.dtype,
                    models_dir: Path | None = None, modules: Sequence[Path] = ()) -> LoadedModel:
    """Load `info` on `device`; raises ModelLoadError naming the file and the cause. `models_dir`: where a Flux
    transformer file's text encoders and VAE are looked for (`models/text_encoder/`, `models/VAE/`); `modules`: the
    files picked in "VAE / Text Encoder" (`modules.forge_modules`), which a Flux single file uses first."""
    device = torch.device(device)
    try:
        if info.format == "diffusers":
            if flux_model.is_flux_folder(Path(info.path)):
                return flux_model.load_diffusers_folder(info, device, dtype)
            return load_diffusers_folder(info, device, dtype)
        return load_single_file(info, device, dtype, models_dir, modules)
    except ModelLoadError:
        raise
    except flux_model.FluxLoadError as exc:
        raise ModelLoadError(str(exc)) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{info.path}: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------------
# The manager
# ---------------------------------------------------------------------------------------------------------------

def checkpoint_sha256(path: Path, cache: DiskCache | None) -> str:
    """Whole-file SHA-256 of a single-file checkpoint, cached in cache.json by mtime and size."""
    value = hashes.file_hash(path, cache, whole_file=True)
    if cache is not None:
        cache.save()
    return value


def scan_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Every `.safetensors`/`.ckpt` file and diffusers folder under `root` (recursive, hidden entries skipped; each
    real folder once, so symlink loops end: `regular_files.walk`; FIFOs and other non-regular files skipped)."""
    found: list[CheckpointInfo] = []
    if not root.is_dir():
        return found
    for folder, dirs, files in regular_files.walk(root, sort_key=str):
        here = Path(folder)
        keep = []
        for name in sorted(dirs):
            if name.startswith("."):
                continue
            sub = here / name
            if is_diffusers_folder(sub):
                found.append(CheckpointInfo(path=sub, name=sub.relative_to(root).as_posix(), format="diffusers"))
            else:
                keep.append(name)
        dirs[:] = keep
        for name in files:
            if name.startswith(".") or not name.lower().endswith(SINGLE_FILE_SUFFIXES):
                continue
            file = here / name
            if file.exists() and not file.is_file():  # a FIFO or device named like a checkpoint: never opened
                log.warning("checkpoint %s skipped: not a regular file", file)
                continue
            found.append(CheckpointInfo(path=file, name=file.relative_to(root).as_posix(), format="single-file"))
    return sorted(found, key=lambda info: info.name.lower())


class ModelManager:
    """The host's checkpoints and the one loaded model."""

    def __init__(self, paths: Any, options: Any, cache: DiskCache | None, callbacks: Any, device: torch.device,
                 dtype: torch.dtype, hashing: bool = True) -> None:
        self.paths = paths
        self.options = options
        self.cache = cache
        self.callbacks = callbacks
        self.device = torch.device(device)
        self.dtype = dtype
        self.hashing = hashing
        self._lock = threading.RLock()
        self._current: LoadedModel | None = None
        self._current_modules: tuple[str, ...] = ()  # the "VAE / Text Encoder" selection it was loaded with
        self._checkpoints: list[CheckpointInfo] = []
        infos = getattr(options, "infos", {})
        if "sd_model_checkpoint" in infos:
            infos["sd_model_checkpoint"].onchange = self._on_option_change

    @property
    def current(self) -> LoadedModel | None:
        """The loaded model, or None."""
        return self._current

    def list_checkpoints(self) -> list[CheckpointInfo]:
        """Rescan `paths.ckpt_dir`; hashes already in the cache are filled in."""
        found = scan_checkpoints(Path(self.paths.ckpt_dir))
        if self.hashing and self.cache is not None:
            for info in found:
                if info.format == "single-file":
                    cached = self.cache.get(HASH_SUBSECTION, info.path)
                    info.sha256 = cached if isinstance(cached, str) else None
        with self._lock:
            self._checkpoints = found
        return list(found)

    def titles(self) -> list[str]:
        """Titles of the checkpoints found by the last scan (the `sd_model_checkpoint` choices), plus ""."""
        return ["", *(info.title for info in (self._checkpoints or self.list_checkpoints()))]

    def find(self, name_or_title_or_path: str | os.PathLike[str]) -> CheckpointInfo | None:
        """A checkpoint by title ("name [hash]"), name ("sub/x.safetensors"), name without extension, file name,
        path, or hash prefix (>= 8 hex characters); None when nothing matches. A path outside the checkpoints
        folder is accepted if it is a checkpoint file or diffusers folder."""
        query = str(name_or_title_or_path).strip()
        if not query:
            return None
        with self._lock:
            known = list(self._checkpoints)
        found = self._match(query, known, allow_outside=False) if known else None
        return found if found is not None else self._match(query, self.list_checkpoints(), allow_outside=True)

    @staticmethod
    def _match(query: str, candidates: list[CheckpointInfo], allow_outside: bool) -> CheckpointInfo | None:
        bare = _TITLE_HASH_RE.sub("", query)
        for info in candidates:
            if query in (info.title, info.name) or bare == info.name:
                return info
        for info in candidates:
            stem = info.name.rsplit(".", 1)[0] if info.format == "single-file" else info.name
            if bare in (stem, Path(info.name).name, Path(stem).name):
                return info
        path = Path(query).expanduser()
        try:
            exists = path.exists()
        except (OSError, ValueError):  # e.g. a NUL byte or an over-long name from an API request
            exists = False
        if exists:
            resolved = path.resolve()
            for info in candidates:
                if Path(info.path).resolve() == resolved:
                    return info
            if not allow_outside:
                return None
            if resolved.is_file() and resolved.suffix.lower() in SINGLE_FILE_SUFFIXES:
                return CheckpointInfo(path=resolved, name=resolved.name, format="single-file")
            if is_diffusers_folder(resolved):
                return CheckpointInfo(path=resolved, name=resolved.name, format="diffusers")
        if re.fullmatch(r"[0-9a-fA-F]{8,64}", query):
            for info in candidates:
                if info.sha256 and info.sha256.lower().startswith(query.lower()):
                    return info
        return None

    def load(self, name_or_path: str | os.PathLike[str] | CheckpointInfo, reload: bool = False,
             modules: Sequence[str] | None = None) -> LoadedModel:
        """Load a checkpoint and make it current; the same checkpoint already loaded is returned unless `reload`.
        `modules`: the "VAE / Text Encoder" selection to load with (relative names; None: the
        `forge_additional_modules` option's).

        Runs the `model_loaded` callbacks. On failure raises ModelLoadError and the previous model stays current.
        """
        info = name_or_path if isinstance(name_or_path, CheckpointInfo) else self.find(name_or_path)
        if info is None:
            raise ModelLoadError(f"checkpoint {str(name_or_path)!r} not found in {self.paths.ckpt_dir}")
        with self._lock:
            current = self._current
            if (not reload and current is not None
                    and Path(current.checkpoint.path).resolve() == Path(info.path).resolve()):
                return current
            if self.hashing and info.format == "single-file" and Path(info.path).is_file():
                try:
                    info.sha256 = checkpoint_sha256(Path(info.path), self.cache)
                except OSError as exc:
                    raise ModelLoadError(f"{info.path}: cannot read the file to hash it ({exc})") from exc
            names = tuple(forge_modules.stored_selection(self.options) if modules is None else modules)
            log.info("loading checkpoint %s", info.path)
            model = load_checkpoint(info, self.device, self.dtype, Path(self.paths.models_dir),
                                    forge_modules.selected_paths(Path(self.paths.models_dir), names))
            self._current, self._current_modules = model, names
            self._sync_option(info)
        self.callbacks.run("model_loaded", model)
        return model

    def get(self) -> LoadedModel:
        """The current model, else the `sd_model_checkpoint` option's checkpoint, else the first one found that
        loads (files that fail are logged and skipped)."""
        if self._current is not None:
            return self._current
        wanted = self._option_value()
        if wanted:
            if self.find(wanted) is not None:
                return self.load(wanted)
            log.warning("checkpoint %r from the settings was not found; using the first checkpoint", wanted)
        found = self.list_checkpoints()
        if not found:
            raise ModelLoadError(f"no checkpoints found in {self.paths.ckpt_dir} "
                                 "(put a .safetensors/.ckpt file or a diffusers folder there)")
        errors = []
        for info in found:  # the first checkpoint that loads; broken files are reported and skipped
            try:
                return self.load(info)
            except ModelLoadError as exc:
                log.error("%s", exc)
                errors.append(str(exc))
        raise ModelLoadError("no checkpoint could be loaded: " + "; ".join(errors))

    def apply_modules(self, names: Sequence[str]) -> LoadedModel | None:
        """Reload the current model with the "VAE / Text Encoder" selection `names` when it is a Flux single file
        loaded with another one (as Forge reloads on a change); other models are returned as they are. On failure
        raises ModelLoadError and the current model stays."""
        with self._lock:
            current = self._current
            if (current is None or not current.is_flux or current.checkpoint.format != "single-file"
                    or tuple(names) == self._current_modules):
                return current
            return self.load(current.checkpoint, reload=True, modules=names)

    def unload(self) -> None:
        """Forget the current model (its memory is freed when nothing else holds it)."""
        with self._lock:
            self._current = None

    # -- options ------------------------------------------------------------------------------------------------

    def _option_value(self) -> str:
        try:
            return str(self.options.get("sd_model_checkpoint") or "")
        except KeyError:
            return ""

    def _sync_option(self, info: CheckpointInfo) -> None:
        """Record the loaded checkpoint's title in the options without triggering a reload."""
        infos = getattr(self.options, "infos", {})
        if "sd_model_checkpoint" not in infos or self._option_value() == info.title:
            return
        hook = infos["sd_model_checkpoint"].onchange
        infos["sd_model_checkpoint"].onchange = None
        try:
            self.options.set("sd_model_checkpoint", info.title)
        except (ValueError, KeyError) as exc:
            log.warning("could not record the loaded checkpoint in the settings: %s", exc)
        finally:
            infos["sd_model_checkpoint"].onchange = hook

    def _on_option_change(self, value: Any) -> None:
        """`sd_model_checkpoint` changed: load it; on failure put the option back and re-raise."""
        if not value:
            return
        try:
            self.load(str(value))
        except ModelLoadError:
            if self._current is not None:
                self._sync_option(self._current.checkpoint)
            raise
