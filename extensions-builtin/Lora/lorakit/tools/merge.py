"""`python launch.py merge`: bake LoRAs into a copy of a checkpoint, in the input's format.

    python launch.py merge --ckpt model.safetensors --lora-dir models/Lora --prompt "<lora:a:0.7> <lora:b:1>" --out merged.safetensors

Single file in -> single file out with exactly the input's keys, shapes and dtypes (non-weight tensors and the
metadata kept); diffusers folder in -> diffusers folder out (every other file copied; the UNet and text encoders
re-saved in their original dtype). The merge runs in float32 on the CPU through the same engine as the WebUI, so the
merged weights equal what a generation uses. Exits 2 on bad arguments or tags, 1 when a LoRA is missing or fails
(one line on stderr, never a traceback). Files in the Lora folders that are not the requested LoRAs are never a
reason to fail (a FIFO is skipped, a broken file only listed), and `--max-seconds` bounds the whole run.
Outputs are written atomically.

Streaming: a `.safetensors` single file (to a `.safetensors` output) and a diffusers folder with safetensors weights
are merged tensor by tensor, never loaded whole. The model is built without weights (`sd_models.load_layout`: meta
parameters, for key resolution); the engine plans what each layer wants (`LoraEngine.plan`); then each tensor of the
file is read (`SafetensorsReader`, plain reads), and when its layer wants LoRAs turned into the model's form (the
single file's q/k/v split, transpose, reshape), merged in float32 by the patcher's own `add_contributions`, cast back to
the file's dtype and written (`write_safetensors_stream`), then dropped. Resident memory is therefore the LoRA files, a
few copies of the largest tensor and the interpreter, whatever the checkpoint's size; the summary prints its peak.
`.ckpt` files (pickles, readable only whole) and diffusers folders with `.bin` weights are loaded whole, as before.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modules.atomic_io import atomic_path
from modules.checkpoint_convert import ldm_tensor_to_model, model_tensor_to_ldm
from modules.extra_networks import parse_prompt
from modules.safetensors_header import (
    SafetensorsHeaderError,
    SafetensorsReader,
    write_safetensors,
    write_safetensors_stream,
)
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import ModelLoadError, is_diffusers_folder, load_checkpoint, load_layout

from ..algorithms.tensor_math import compute_dtype
from ..engine.engine import LoraEngine, NetworkRequest
from ..engine.patcher import Contribution, LayerPatchError, add_contributions, max_abs
from ..errors import LoraError
from ..formats import files as lora_files
from ..formats.blocks import BlockLayout
from ..library.registry import NetworkRegistry
from ..prompt.tags import TagError, parse_tag

log = logging.getLogger("merge")

# A diffusers folder's part folders -> the model component each holds (Flux keeps its denoiser in `transformer/`).
DIFFUSERS_PARTS = {"unet": "unet", "transformer": "unet", "text_encoder": "text_encoders.0",
                   "text_encoder_2": "text_encoders.1"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")
DEFAULT_MAX_SECONDS = 3600.0


class MergeError(LoraError):
    """A merge that cannot be completed; `code` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch.py merge", description="Bake LoRAs into a copy of a checkpoint.")
    parser.add_argument("--ckpt", required=True, help="single-file checkpoint or diffusers folder")
    parser.add_argument("--lora-dir", required=True, action="append", help="folder with LoRA files (repeatable)")
    parser.add_argument("--prompt", required=True, help='tags to apply, e.g. "<lora:a:0.7> <lora:b:1>"')
    parser.add_argument("--out", required=True, help="output file (single file) or folder (diffusers)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--models-dir", default=None,
                        help="folder with text_encoder/ and VAE/ for a Flux transformer file (default: the folder "
                             "above the checkpoint's folder, A1111's models/)")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"give up after this many seconds (default {DEFAULT_MAX_SECONDS:g})")
    return parser


@contextlib.contextmanager
def wall_clock_limit(seconds: float) -> Iterator[None]:
    """Raise MergeError once `seconds` have passed (SIGALRM; where there is none, or off the main thread, no limit).
    The Lora folder scan has its own bounds (`NetworkRegistry`), and FIFOs are never opened: this is the last guard."""
    usable = seconds > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise MergeError(f"gave up after {seconds:g} seconds (--max-seconds)", 1)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _components_dtype(folder: Path) -> torch.dtype:
    """The floating dtype the component's weights are stored in (from its safetensors header), else float32."""
    for weights in sorted(folder.glob("*.safetensors")):
        header = lora_files.read_safetensors_header(weights)
        for key, entry in header.items():
            if key != "__metadata__" and entry["dtype"] in ("F16", "BF16", "F32", "F64"):
                return {"F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}.get(entry["dtype"], torch.float32)
    return torch.float32


def default_models_dir(ckpt: Path) -> Path:
    """Where a Flux transformer file's companions are looked for when not given: A1111's `models/` (the folder above
    `models/Stable-diffusion/`)."""
    return Path(ckpt).resolve().parent.parent


def load_model(ckpt: Path, models_dir: Path | None = None) -> Any:
    """The checkpoint (single file or diffusers folder) in float32 on the CPU. Raises MergeError."""
    if not ckpt.exists():
        raise MergeError(f"checkpoint not found: {ckpt}", 2)
    diffusers = is_diffusers_folder(ckpt)
    info = CheckpointInfo(path=ckpt, name=ckpt.name, format="diffusers" if diffusers else "single-file")
    try:
        return load_checkpoint(info, torch.device("cpu"), torch.float32, models_dir or default_models_dir(ckpt))
    except ModelLoadError as exc:
        raise MergeError(str(exc), 1) from exc


def prepare(ckpt: Path, lora_dirs: list[Path], prompt: str, models_dir: Path | None = None
            ) -> tuple[Any, LoraEngine, list[NetworkRequest]]:
    """Parse the tags, load the checkpoint and an engine over `lora_dirs` (shared by merge and combine).
    Raises MergeError: code 2 for bad arguments or tags, 1 for files that cannot be used."""
    tags = _parse_tags(prompt)
    model = load_model(ckpt, models_dir)
    engine, requests = _engine(model, lora_dirs, tags)
    return model, engine, requests


def _parse_tags(prompt: str) -> list[Any]:
    """The prompt's lora tags, parsed; MergeError (code 2) when there are none, one is malformed or scheduled."""
    _, data = parse_prompt(prompt)
    params = data.get("lora", []) + data.get("lyco", [])
    if not params:
        raise MergeError(f"no <lora:...> tag in --prompt {prompt!r}", 2)
    try:
        tags = [parse_tag(p) for p in params]
    except TagError as exc:
        raise MergeError(str(exc), 2) from exc
    if any(tag.is_scheduled for tag in tags):
        raise MergeError("step schedules (start=, stop=, w@step) cannot be baked into a file", 2)
    return tags


def _engine(model: Any, lora_dirs: list[Path], tags: list[Any]) -> tuple[LoraEngine, list[NetworkRequest]]:
    """An engine over `lora_dirs` for `model`, and the tags as requests for the model's block layout (notices about
    ignored arguments are logged)."""
    registry = NetworkRegistry(lora_dirs, cache=None, hashing=False)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    blocks = BlockLayout.of_model(model)
    for notice in (n for tag in tags for n in tag.notices(blocks)):
        log.warning("%s", notice)
    try:
        requests = [tag.request(blocks) for tag in tags]
    except TagError as exc:
        raise MergeError(str(exc), 2) from exc
    return engine, requests


def check_output(out: Path, overwrite: bool, *inputs: Path) -> None:
    """Refuse to overwrite an existing output (unless asked) or an input."""
    if out.exists() and not overwrite:
        raise MergeError(f"{out} exists; pass --overwrite to replace it", 2)
    if any(out.resolve() == path.resolve() for path in inputs):
        raise MergeError("--out must not be an input file", 2)


@dataclass
class MergeResult:
    """What a merge did: warnings to show, tensors written, layers merged, time and peak resident memory."""

    warnings: list[str] = field(default_factory=list)
    streamed: bool = False
    tensors: int = 0
    layers_merged: int = 0
    largest_tensor_bytes: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0

    def summary(self, out: Path) -> str:
        """The line the tool prints when it is done."""
        how = (f"streamed {self.tensors} tensors ({self.layers_merged} layers merged), largest tensor "
               f"{self.largest_tensor_bytes / GIB:.2f} GiB" if self.streamed else "loaded whole")
        return f"wrote {out}: {how}; {self.seconds:.1f} s; peak resident memory {self.peak_rss_bytes / GIB:.2f} GiB"


GIB = 1 << 30


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports it in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _check_report(report: Any) -> list[str]:
    """Raise MergeError for LoRAs not found or failing; return the warnings."""
    problems = [f"Lora not found: {', '.join(report.not_found)}"] if report.not_found else []
    problems += [f"Lora {name}: {message}" for name, message in report.errors.items()]
    if problems:
        raise MergeError("; ".join(problems), 1)
    return list(dict.fromkeys(report.warnings))


def merge(ckpt: Path, lora_dirs: list[Path], prompt: str, out: Path, overwrite: bool = False,
          models_dir: Path | None = None) -> MergeResult:
    """Do the merge (streamed where the formats allow, see the module docstring). `models_dir`: where a Flux
    transformer file's text encoders and VAE are (default `default_models_dir`). Raises MergeError."""
    start = time.perf_counter()
    check_output(out, overwrite, ckpt)
    if _streamable(ckpt, out):
        result = _merge_streaming(ckpt, lora_dirs, prompt, out, models_dir)
    else:
        model, engine, requests = prepare(ckpt, lora_dirs, prompt, models_dir)
        result = MergeResult(warnings=_check_report(engine.activate(requests)))
        if model.checkpoint.format == "diffusers":
            _write_diffusers(model, ckpt, out)
        else:
            _write_single_file(model, out)
    result.seconds = time.perf_counter() - start
    result.peak_rss_bytes = peak_rss_bytes()
    return result


# ------------------------------------------------------------------------------------------------ streaming
def _streamable(ckpt: Path, out: Path) -> bool:
    if is_diffusers_folder(ckpt):
        return all(_weight_files(ckpt / part) for part in DIFFUSERS_PARTS if (ckpt / part / "config.json").is_file())
    return ckpt.suffix.lower() == ".safetensors" and out.suffix.lower() != ".ckpt"


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files `from_pretrained` reads in a diffusers part folder: the shards an index names, else the
    files without a variant (`.fp16.`); [] when the part's weights are `.bin` only."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            names = sorted(set(json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MergeError(f"{indexes[0]}: unreadable shard index ({exc})", 1) from exc
        return [folder / name for name in names]
    return sorted(f for f in folder.glob("*.safetensors") if f.name.count(".") == 1)


@dataclass
class _Source:
    """One weight file of the checkpoint: which model parameters each of its tensors holds, and how."""

    path: Path
    params_of: dict[str, list[str]]  # file key -> model parameters ("unet.<param>"), split parts in index order
    key_of: dict[str, str]  # model parameter -> file key
    transforms: dict[str, dict[str, Any]]


def _sources(model: Any, ckpt: Path) -> list[_Source]:
    """The checkpoint's weight files with their key maps (single file: the loader's key map; diffusers: names)."""
    if model.checkpoint.format != "diffusers":
        transforms = model.key_map_special.get("transforms", {})
        params_of: dict[str, list[str]] = {}
        for param, key in model.key_map.items():
            params_of.setdefault(key, []).append(param)
        for params in params_of.values():
            params.sort(key=lambda p: int((transforms.get(p) or {}).get("index", 0)))
        return [_Source(ckpt, params_of, dict(model.key_map), transforms)]
    modules = model.torch_modules()
    sources = []
    for part, prefix in DIFFUSERS_PARTS.items():
        if prefix not in modules or not (ckpt / part / "config.json").is_file():
            continue
        names = set(modules[prefix].state_dict())
        for file in _weight_files(ckpt / part):
            keys = lora_files.read_safetensors_header(file)
            mapping = {key: [f"{prefix}.{key}"] for key in keys if key in names}
            sources.append(_Source(file, mapping, {f"{prefix}.{k}": k for k in mapping}, {}))
    return sources


class _FileMerger:
    """Produces the merged tensors of one weight file, one at a time, for `write_safetensors_stream`."""

    def __init__(self, reader: SafetensorsReader, source: _Source, wanted: dict[str, tuple[Contribution, ...]],
                 result: MergeResult) -> None:
        self.reader = reader
        self.source = source
        self.wanted = wanted
        self.result = result
        self.pending: dict[str, torch.Tensor] = {}  # merged parameters computed before their own tensor's turn

    def model_value(self, param: str) -> torch.Tensor:
        """The pristine value of a parameter in the model's form, read from this file now."""
        return ldm_tensor_to_model(self.reader.read(self.source.key_of[param]), self.source.transforms.get(param), None)

    def merged(self, param: str, known: torch.Tensor | None = None) -> torch.Tensor:
        """The merged value (compute dtype) of parameter `param` of a layer that wants LoRAs."""
        if param in self.pending:
            return self.pending.pop(param)
        layer, _, leaf = param.rpartition(".")
        contributions = self.wanted[layer]
        bias_key = f"{layer}.bias"
        has_bias = bias_key in self.source.key_of
        bias_changes = any(c.module.low_rank(c.multiplier, c.dyn_dim) is None for c in contributions)
        if leaf == "bias" and not bias_changes:  # low-rank deltas leave the bias as it is
            return known if known is not None else self.model_value(param)
        weight = known if leaf == "weight" and known is not None else self.model_value(f"{layer}.weight")
        stored = weight.dtype
        weight = weight.to(compute_dtype(weight), copy=True)
        bias = None
        if has_bias and bias_changes:
            bias = (known if leaf == "bias" and known is not None else self.model_value(bias_key)).to(weight.dtype)
        try:
            bias = add_contributions(layer, weight, bias, contributions, max_abs(weight), stored)
        except LayerPatchError as exc:
            raise MergeError(f"Lora {exc.network.name}: failed on layer {exc.layer}: {exc.cause}", 1) from exc
        self.result.layers_merged += 1
        if bias is not None and not has_bias:
            self.result.warnings.append(f"{layer}: a LoRA changes this layer's bias, but the checkpoint has no bias "
                                        "tensor for it; the bias change is not written")
        if leaf == "weight":
            if bias is not None and has_bias:
                self.pending[bias_key] = bias
            return weight
        self.pending[f"{layer}.weight"] = weight
        return bias if bias is not None else self.model_value(param)

    def produce(self, key: str) -> torch.Tensor:
        """File tensor `key` with its layers' LoRAs merged, in the file's dtype and form."""
        spec = self.reader.entries[key]
        self.result.tensors += 1
        self.result.largest_tensor_bytes = max(self.result.largest_tensor_bytes,
                                               spec["data_offsets"][1] - spec["data_offsets"][0])
        params = self.source.params_of.get(key, [])
        if not any(p.rpartition(".")[0] in self.wanted for p in params):
            return self.reader.read(key)
        raw = self.reader.read(key)
        dtype = raw.dtype
        parts = []
        for param in params:
            transform = self.source.transforms.get(param)
            if param.rpartition(".")[0] not in self.wanted:
                value = ldm_tensor_to_model(raw, transform, None)
            else:
                known = None if param in self.pending else ldm_tensor_to_model(raw, transform, None)
                value = self.merged(param, known)
            parts.append(model_tensor_to_ldm(value.to(dtype), transform))
        merged = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        return merged.reshape(raw.shape)


def _merge_streaming(ckpt: Path, lora_dirs: list[Path], prompt: str, out: Path, models_dir: Path | None) -> MergeResult:
    tags = _parse_tags(prompt)
    if not ckpt.exists():
        raise MergeError(f"checkpoint not found: {ckpt}", 2)
    info = CheckpointInfo(path=ckpt, name=ckpt.name, format="diffusers" if is_diffusers_folder(ckpt) else "single-file")
    try:
        model = load_layout(info, models_dir or default_models_dir(ckpt))
    except ModelLoadError as exc:
        raise MergeError(str(exc), 1) from exc
    engine, requests = _engine(model, lora_dirs, tags)
    report, wanted, _ = engine.plan(requests)
    result = MergeResult(warnings=_check_report(report), streamed=True)
    sources = _sources(model, ckpt)
    result.warnings += _unwritten_layers(wanted, sources, ckpt)

    def write(source: _Source, target: Path) -> None:
        try:
            with SafetensorsReader(source.path) as reader:
                merger = _FileMerger(reader, source, wanted, result)
                specs = {key: reader.spec(key) for key in reader.entries}
                write_safetensors_stream(target, specs, merger.produce, reader.metadata)
        except SafetensorsHeaderError as exc:
            raise MergeError(f"{source.path}: {exc}", 1) from exc

    if info.format == "diffusers":
        with atomic_path(out, directory=True) as tmp:
            shutil.copytree(ckpt, tmp, dirs_exist_ok=True, ignore=_weights_of_parts)
            for source in sources:
                write(source, tmp / source.path.relative_to(ckpt))
    else:
        write(sources[0], out)
    result.warnings = list(dict.fromkeys(result.warnings))
    return result


def _unwritten_layers(wanted: dict[str, Any], sources: list[_Source], ckpt: Path) -> list[str]:
    """A warning per model component whose LoRA-changed layers the checkpoint does not hold (a Flux transformer
    file without its text encoders: they live in other files, which the merge does not rewrite)."""
    held = {param for source in sources for param in source.key_of}
    missing: dict[str, int] = {}
    for layer in wanted:
        if f"{layer}.weight" not in held:
            component = layer.split(".")[0] if layer.startswith("unet.") else ".".join(layer.split(".")[:2])
            missing[component] = missing.get(component, 0) + 1
    names = {"unet": "the denoiser", "text_encoders.0": "text encoder 1", "text_encoders.1": "text encoder 2"}
    return [f"{ckpt.name} does not hold {names.get(c, c)} ({n} layers the LoRAs change): those changes are not "
            "written (merge into the file that holds it)" for c, n in missing.items()]


def _weights_of_parts(folder: str, names: list[str]) -> list[str]:
    """copytree's ignore: the weight files of the parts that are rewritten."""
    return [n for n in names if Path(folder).name in DIFFUSERS_PARTS and n.endswith(WEIGHT_SUFFIXES)]


def _write_single_file(model, out: Path) -> None:
    from modules.checkpoint_convert import diffusers_to_ldm  # noqa: PLC0415

    state = diffusers_to_ldm(model.torch_modules(), model.key_map, model.key_map_special)
    metadata = {k: str(v) for k, v in (model.key_map_special.get("metadata") or {}).items()}
    if out.suffix.lower() == ".ckpt":
        with atomic_path(out) as tmp:
            torch.save({"state_dict": state}, tmp)
    else:
        write_safetensors(out, state, metadata)


def _write_diffusers(model, ckpt: Path, out: Path) -> None:
    with atomic_path(out, directory=True) as tmp:
        shutil.copytree(ckpt, tmp, dirs_exist_ok=True,
                        ignore=lambda folder, names: [n for n in names if Path(folder).name in DIFFUSERS_PARTS
                                                      and n.endswith(WEIGHT_SUFFIXES)])
        components = model.torch_modules()
        modules = {part: components[prefix] for part, prefix in DIFFUSERS_PARTS.items()
                   if prefix in components and (ckpt / part / "config.json").is_file()}
        for part, module in modules.items():
            dtype = _components_dtype(ckpt / part)
            module.to(dtype).save_pretrained(tmp / part, safe_serialization=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        with wall_clock_limit(args.max_seconds):
            result = merge(Path(args.ckpt), [Path(d) for d in args.lora_dir], args.prompt, Path(args.out),
                           args.overwrite, Path(args.models_dir) if args.models_dir else None)
    except MergeError as exc:
        print(f"merge failed: {exc}", file=sys.stderr)
        return exc.code
    except (LoraError, OSError) as exc:
        print(f"merge failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # one clear line, not a traceback (the log at debug level has it)
        log.debug("merge failed", exc_info=exc)
        print(f"merge failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(result.summary(Path(args.out)))
    return 0
