"""Benchmark of the merge tool's memory: `launch.py merge` of two kohya LoRAs into a full-size checkpoint.

Usage: `venv/bin/python -m bench.bench_merge [--family SDXL] [--dtype bfloat16] [--rank 32] [--models DIR]`

Method: the full-size random checkpoint (`bench.checkpoints`, written once tensor by tensor and reused), two kohya
LoCon files of rank `--rank` over every layer kohya's LoCon trains (`bench_lora_apply.write_lora`, resolved against
the checkpoint's layout: no weights loaded here), then `python launch.py merge --ckpt ... --prompt "<lora:a:0.7>
<lora:b:0.5>" --out ...` as a child process. Printed: the tool's own summary line (tensors streamed, layers merged,
largest tensor, peak resident memory), the child's peak resident memory from the kernel (`wait4` ru_maxrss), wall
time, and the checkpoint's size on disk and in float32 for scale. The merged file is deleted afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_lora_apply import DTYPES, GIB, ROOT, cpu_model, write_lora
from bench.checkpoints import DEFAULT_FOLDER, random_checkpoint
from modules.safetensors_header import read_header
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import load_layout

log = logging.getLogger("bench_merge")


def main(argv: list[str] | None = None) -> int:
    """Build (or reuse) the checkpoint, write the LoRAs, run the merge tool, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=("SD1", "SDXL"), default="SDXL")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="checkpoint dtype on disk")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--models", type=Path, default=DEFAULT_FOLDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    ckpt = random_checkpoint(args.models, args.family, DTYPES[args.dtype])
    header = read_header(ckpt)
    elements = sum(_count(v["shape"]) for k, v in header.items() if k != "__metadata__")
    layout = load_layout(CheckpointInfo(path=ckpt, name=ckpt.name, format="single-file"))
    with tempfile.TemporaryDirectory(prefix="bench_merge_", dir=args.models) as tmp:
        lora_dir = Path(tmp) / "Lora"
        lora_dir.mkdir()
        flops = write_lora(lora_dir / "a.safetensors", layout, "locon", args.rank, seed=1)
        write_lora(lora_dir / "b.safetensors", layout, "locon", args.rank, seed=2)
        lora_mb = (lora_dir / "a.safetensors").stat().st_size / 1e6
        out = Path(tmp) / "merged.safetensors"
        command = [sys.executable, str(ROOT / "launch.py"), "merge", "--ckpt", str(ckpt), "--lora-dir", str(lora_dir),
                   "--prompt", "<lora:a:0.7> <lora:b:0.5>", "--out", str(out)]
        log.info("running %s", " ".join(command))
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        stdout, stderr = child.stdout.read(), child.stderr.read()
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            print(stderr, file=sys.stderr)
            return child.returncode
        out_size = out.stat().st_size
    summary = next((line for line in stdout.splitlines() if line.startswith("wrote ")), stdout.strip())
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"load average at the end {os.getloadavg()[0]:.2f}")
    print(f"Checkpoint: {args.family} full size, {args.dtype}, {ckpt.stat().st_size / GIB:.2f} GiB on disk "
          f"({elements / 1e9:.2f} G elements = {4 * elements / GIB:.2f} GiB in float32); merged file "
          f"{out_size / GIB:.2f} GiB")
    print(f"LoRAs: two kohya LoCon rank {args.rank}, {len(flops)} layers each, {lora_mb:.0f} MB per file")
    print(f"Tool: {summary.split(': ', 1)[-1]}")
    print(f"Kernel: peak resident memory of the merge process {usage.ru_maxrss / (1 << 20):.2f} GiB "
          f"(ru_maxrss), wall time {wall:.1f} s, CPU time {usage.ru_utime + usage.ru_stime:.1f} s (the rest is waiting "
          f"for the disk), {usage.ru_inblock * 512 / GIB:.2f} GiB read from disk")
    return 0


def _count(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


if __name__ == "__main__":
    raise SystemExit(main())
