"""Command lines of the LoRA tools (through `launch.py` / `webui.sh`):

    python launch.py extract --base base.safetensors --tuned tuned.safetensors --out lora.safetensors --rank 32 [--conv]
    python launch.py extract --base ... --tuned ... --out ... --energy 0.99
    python launch.py combine --ckpt model.safetensors --lora-dir models/Lora --prompt "<lora:a:0.5> <lora:b:1>" --out c.safetensors [--rank 64]

Exit 0 on success (the report is printed), 2 for bad arguments or tags, 1 when a file cannot be used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import LoraError
from . import extract_combine
from .merge import MergeError, check_output, load_model, prepare


def _run(action) -> int:
    try:
        report = action()
    except MergeError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return exc.code
    except LoraError as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def extract_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py extract", description="Extract a LoRA from two checkpoints.")
    parser.add_argument("--base", required=True)
    parser.add_argument("--tuned", required=True)
    parser.add_argument("--out", required=True)
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=int, help="fixed rank per layer")
    size.add_argument("--energy", type=float, help="keep this share of each layer's singular-value energy (0-1]")
    parser.add_argument("--conv", action="store_true", help="also extract k x k convolutions (LoCon)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    base, tuned, out = Path(args.base), Path(args.tuned), Path(args.out)

    def action() -> extract_combine.ToolReport:
        check_output(out, args.overwrite, base, tuned)
        return extract_combine.extract(load_model(base), load_model(tuned), out, args.rank, args.energy, args.conv)

    return _run(action)


def combine_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="launch.py combine", description="Combine LoRAs into one file.")
    parser.add_argument("--ckpt", required=True, help="the model the LoRAs are for (names are resolved against it)")
    parser.add_argument("--lora-dir", required=True, action="append")
    parser.add_argument("--prompt", required=True, help='e.g. "<lora:a:0.5> <lora:b:1>"')
    parser.add_argument("--out", required=True)
    parser.add_argument("--rank", type=int, default=None, help="compress every layer to this rank (lossy)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)

    def action() -> extract_combine.ToolReport:
        check_output(out, args.overwrite, Path(args.ckpt))
        _, engine, requests = prepare(Path(args.ckpt), [Path(d) for d in args.lora_dir], args.prompt)
        return extract_combine.combine(engine, requests, out, args.rank)

    return _run(action)
