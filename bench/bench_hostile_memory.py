"""Memory under hostile files: the two measurements of the reliability issue, each in a fresh subprocess.

Usage: `venv/bin/python -m bench.bench_hostile_memory [--sparse-gb 2] [--tags 500] [--loras 10]`

* sparse: a `.safetensors` whose header claims `--sparse-gb` GB of tensors but whose payload is a hole (a few KB on
  disk) is activated beside a good LoRA; prints the process's peak RSS growth during the activation and the RSS left
  after it (the outside attack measured ~9 GB peak and ~2 GB left for 2 GB). The engine refuses such a file before
  reading (`formats.files.check_allocated`), and failure records keep no tensors.
* tags: a prompt of `--tags` tags spread over `--loras` LoRAs (tiny SD1 model) is activated through the prompt
  handler five times, then everything is deactivated; prints the RSS growth after the first round, after the last
  and after deactivation (the attack measured +590 MB left resident).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss() -> int:
    """Resident bytes now."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak() -> int:
    """Peak resident bytes so far (VmHWM)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def setup_imports() -> None:
    sys.path.insert(0, str(ROOT))
    from modules.extensions import EXTENSION_IMPORTS  # noqa: PLC0415

    EXTENSION_IMPORTS.offer(ROOT / "extensions-builtin" / "Lora")


def measure_sparse(folder: Path, gigabytes: float) -> dict[str, float]:
    setup_imports()
    from lorakit.engine.engine import LoraEngine, NetworkRequest  # noqa: PLC0415
    from lorakit.library.registry import NetworkRegistry  # noqa: PLC0415
    from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora  # noqa: PLC0415

    model = tiny_loaded_model("SD1", seed=1)
    write_kohya_lora(folder / "good.safetensors", model, seed=1)
    claimed = int(gigabytes * 1024**3) // 256 * 256
    header = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [claimed // 256, 64],
                                                          "data_offsets": [0, claimed]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(folder / "sparse.safetensors", "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + claimed)
    registry = NetworkRegistry([folder], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    gc.collect()
    before, peak_before = rss(), peak()
    report = engine.activate([NetworkRequest("sparse"), NetworkRequest("good")])
    gc.collect()
    return {"claimed_mb": claimed / 2**20, "on_disk_kb": (folder / "sparse.safetensors").stat().st_blocks / 2,
            "peak_growth_mb": (peak() - max(peak_before, before)) / 2**20, "left_mb": (rss() - before) / 2**20,
            "refused": "sparse" in report.errors, "good_applied": [a.network.name for a in report.active] == ["good"]}


def measure_tags(folder: Path, tags: int, loras: int) -> dict[str, float]:
    setup_imports()
    from lorakit.engine.engine import LoraEngine, NetworkRequest  # noqa: PLC0415
    from lorakit.library.registry import NetworkRegistry  # noqa: PLC0415
    from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora  # noqa: PLC0415

    model = tiny_loaded_model("SD1", seed=1)
    for index in range(loras):
        write_kohya_lora(folder / f"l{index}.safetensors", model, seed=index, rank=8)
    registry = NetworkRegistry([folder], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    requests = [NetworkRequest(f"l{i % loras}", 0.01 * (1 + i % 7), 0.01 * (1 + i % 5)) for i in range(tags)]
    gc.collect()
    before = rss()
    engine.activate(requests)
    gc.collect()
    first = rss() - before
    for _ in range(4):
        engine.activate(requests)
    gc.collect()
    last = rss() - before
    engine.deactivate_all()
    engine.purge_memory()
    gc.collect()
    return {"after_first_mb": first / 2**20, "after_fifth_mb": last / 2**20, "after_deactivate_mb": (rss() - before) / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sparse-gb", type=float, default=2.0)
    parser.add_argument("--tags", type=int, default=500)
    parser.add_argument("--loras", type=int, default=10)
    parser.add_argument("--child", choices=["sparse", "tags"])
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure_sparse(Path(tmp), args.sparse_gb) if args.child == "sparse" else \
                measure_tags(Path(tmp), args.tags, args.loras)
        print(json.dumps(result))
        return 0
    results = {}
    for child in ("sparse", "tags"):
        done = subprocess.run([sys.executable, "-m", "bench.bench_hostile_memory", "--child", child,
                               "--sparse-gb", str(args.sparse_gb), "--tags", str(args.tags), "--loras", str(args.loras)],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            print(done.stderr[-3000:])
            return done.returncode
        results[child] = json.loads(done.stdout.strip().splitlines()[-1])
    sparse, tags = results["sparse"], results["tags"]
    print(f"sparse file: claims {sparse['claimed_mb']:.0f} MB, {sparse['on_disk_kb']:.0f} KB on disk; refused: "
          f"{sparse['refused']}, good LoRA applied: {sparse['good_applied']}")
    print(f"  peak RSS growth during the activation: {sparse['peak_growth_mb']:.1f} MB (attack measured ~9000 MB)")
    print(f"  RSS left after it: {sparse['left_mb']:.1f} MB (attack measured ~2000 MB)")
    print(f"{args.tags} tags over {args.loras} LoRAs: RSS growth after 1 activation {tags['after_first_mb']:.1f} MB, "
          f"after 5 {tags['after_fifth_mb']:.1f} MB, after deactivate + purge {tags['after_deactivate_mb']:.1f} MB "
          "(attack measured +590 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
