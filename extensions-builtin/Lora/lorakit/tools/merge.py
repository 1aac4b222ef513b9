"""`python launch.py merge`: bake LoRAs into a copy of a checkpoint, in the input's format.

    python launch.py merge --ckpt model.safetensors --lora-dir models/Lora --prompt "<lora:a:0.7> <lora:b:1>" --out merged.safetensors

Single file in -> single file out with exactly the input's keys, shapes and dtypes (non-weight tensors and the
metadata kept); diffusers folder in -> diffusers folder out (every other file copied; the UNet and text encoders
re-saved in their original dtype). The merge runs in float32 on the CPU through the same engine as the WebUI, so the
merged weights equal what a generation uses. Exits 2 on bad arguments or tags, 1 when a LoRA is missing or fails
(one line on stderr, never a traceback). Files in the Lora folders that are not the requested LoRAs are never a
reason to fail (a FIFO is skipped, a broken file only listed), and `--max-seconds` bounds the whole run.
Outputs are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from modules.atomic_io import atomic_path
from modules.extra_networks import parse_prompt
from modules.safetensors_header import write_safetensors
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import ModelLoadError, is_diffusers_folder, load_checkpoint

from ..engine.engine import LoraEngine, NetworkRequest
from ..errors import LoraError
from ..formats import files as lora_files
from ..library.registry import NetworkRegistry
from ..prompt.tags import TagError, parse_tag

log = logging.getLogger("merge")

DIFFUSERS_PARTS = ("unet", "text_encoder", "text_encoder_2")
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


def load_model(ckpt: Path) -> Any:
    """The checkpoint (single file or diffusers folder) in float32 on the CPU. Raises MergeError."""
    if not ckpt.exists():
        raise MergeError(f"checkpoint not found: {ckpt}", 2)
    diffusers = is_diffusers_folder(ckpt)
    info = CheckpointInfo(path=ckpt, name=ckpt.name, format="diffusers" if diffusers else "single-file")
    try:
        return load_checkpoint(info, torch.device("cpu"), torch.float32)
    except ModelLoadError as exc:
        raise MergeError(str(exc), 1) from exc


def prepare(ckpt: Path, lora_dirs: list[Path], prompt: str) -> tuple[Any, LoraEngine, list[NetworkRequest]]:
    """Parse the tags, load the checkpoint and an engine over `lora_dirs` (shared by merge and combine).
    Raises MergeError: code 2 for bad arguments or tags, 1 for files that cannot be used."""
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
    model = load_model(ckpt)
    registry = NetworkRegistry(lora_dirs, cache=None, hashing=False)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    try:
        requests = [tag.request(model.family) for tag in tags]
    except TagError as exc:
        raise MergeError(str(exc), 2) from exc
    return model, engine, requests


def check_output(out: Path, overwrite: bool, *inputs: Path) -> None:
    """Refuse to overwrite an existing output (unless asked) or an input."""
    if out.exists() and not overwrite:
        raise MergeError(f"{out} exists; pass --overwrite to replace it", 2)
    if any(out.resolve() == path.resolve() for path in inputs):
        raise MergeError("--out must not be an input file", 2)


def merge(ckpt: Path, lora_dirs: list[Path], prompt: str, out: Path, overwrite: bool = False) -> list[str]:
    """Do the merge; returns the warnings to show. Raises MergeError."""
    check_output(out, overwrite, ckpt)
    model, engine, requests = prepare(ckpt, lora_dirs, prompt)
    report = engine.activate(requests)
    problems = [f"Lora not found: {', '.join(report.not_found)}"] if report.not_found else []
    problems += [f"Lora {name}: {message}" for name, message in report.errors.items()]
    if problems:
        raise MergeError("; ".join(problems), 1)
    warnings = list(dict.fromkeys(report.warnings))
    if model.checkpoint.format == "diffusers":
        _write_diffusers(model, ckpt, out)
    else:
        _write_single_file(model, out)
    return warnings


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
        modules = {"unet": model.unet, "text_encoder": model.text_encoders[0]}
        if len(model.text_encoders) > 1:
            modules["text_encoder_2"] = model.text_encoders[1]
        for part, module in modules.items():
            dtype = _components_dtype(ckpt / part)
            module.to(dtype).save_pretrained(tmp / part, safe_serialization=True)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        with wall_clock_limit(args.max_seconds):
            warnings = merge(Path(args.ckpt), [Path(d) for d in args.lora_dir], args.prompt, Path(args.out),
                             args.overwrite)
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
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0
