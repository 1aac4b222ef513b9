"""X/Y/Z plot against separate API calls: the patching cost of a 5 x 5 grid (Lora weight x seed).

    venv/bin/python -m bench.bench_xyz                  # the embedded default (tiny SD1) model
    venv/bin/python -m bench.bench_xyz --full           # full-size SD1.5 with random weights (needs >= 10 GB free)

Method. A WebUI serves the real HTTP API on 127.0.0.1. A kohya LoCon (rank 32, every layer a kohya LoCon trains:
on SD1.5 350 layers) is written into its Lora folder. Both runs start from the pristine model (`deactivate_all`):
* grid: one `POST /sdapi/v1/txt2img` with `script_name: "x/y/z plot"`, X = "Lora weight" 0.2..1.0 [5], Y = Seed
  (5 seeds), A1111's positional `script_args`;
* separate: the same 25 images as 25 `POST /sdapi/v1/txt2img` calls with `<lora:bench_locon:w>` in the prompt, in the
  order a client loops over the grid (A1111's order for X = weight, Y = seed: the weight changes on every call).
A benchmark-only always-on script (registered like any extension's script) reads, after each image, the Lora
engine's last activation report (`PatchStats`: seconds, layers rewritten): the patch time of that generation.
Printed side by side: wall time, patch time and share, activations that rewrote layers, layers rewritten; and whether
the 25 grid cells are bitwise the 25 separate images. `--steps`, `--size` (pixels) keep generation short; `--full`
reads (or once writes) the checkpoint in `/work/bench-models/` (outside git) and checks `MemAvailable` first.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import logging
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import httpx
from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
from modules.extensions import EXTENSION_IMPORTS  # noqa: E402

EXTENSION_IMPORTS.offer(ROOT / "extensions-builtin" / "Lora")

from modules.host import WebUI  # noqa: E402
from modules.scripts import AlwaysVisible, Script  # noqa: E402
from modules.webui_server import ServerThread, create_app  # noqa: E402

log = logging.getLogger("bench_xyz")
BENCH_MODELS = Path("/work/bench-models")
FULL_CHECKPOINT = "sd1-float32-seed0.safetensors"
WEIGHTS = "0.2-1 [5]"
WEIGHT_VALUES = ("0.2", "0.4", "0.6", "0.8", "1")
SEEDS = (101, 102, 103, 104, 105)
LORA = "bench_locon"


class PatchProbe(Script):
    """Benchmark-only always-on script: the patch stats of each generation's activation."""

    engine = None
    records: list[tuple[float, int]] = []

    def title(self) -> str:
        return "Patch probe"

    def show(self, is_img2img: bool):
        return AlwaysVisible

    def postprocess_image(self, p, pp) -> None:
        stats = PatchProbe.engine.last_report.stats
        PatchProbe.records.append((stats.seconds, stats.layers_touched))


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def ensure_full_checkpoint() -> Path:
    """The full-size SD1.5 random-weight checkpoint in /work/bench-models (written once, atomically)."""
    path = BENCH_MODELS / FULL_CHECKPOINT
    if path.is_file():
        return path
    from safetensors.torch import save_file  # noqa: PLC0415

    from bench.bench_lora_apply import randomize_  # noqa: PLC0415
    from modules.model_configs import build_components, family_config  # noqa: PLC0415
    from modules.tiny_models import single_file_state_dict  # noqa: PLC0415

    config = family_config("SD1", tiny=False)
    built = build_components(config, empty=True)
    for seed, module in enumerate([built["unet"], built["vae"], *built["text_encoders"]]):
        module.to_empty(device="cpu")
        randomize_(module, seed)
    built["config"] = config
    BENCH_MODELS.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".partial")
    save_file(single_file_state_dict(built, "SD1"), str(temp), metadata={"bench.random_weights": "sd1-float32-seed0"})
    os.replace(temp, path)
    del built
    gc.collect()
    return path


def png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def run(client: httpx.Client, body: dict) -> dict:
    response = client.post("/sdapi/v1/txt2img", json=body)
    response.raise_for_status()
    return response.json()


def measure(webui: WebUI, fn) -> tuple[float, list[tuple[float, int]], list[Image.Image]]:
    """(wall seconds, per-image patch records, images) of `fn()` from the pristine model."""
    webui.services["lora"].deactivate_all()
    PatchProbe.records.clear()
    start = time.perf_counter()
    images = fn()
    return time.perf_counter() - start, list(PatchProbe.records), images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="full-size SD1.5 random weights instead of the tiny model")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=64, help="image width and height in pixels")
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from bench.bench_lora_apply import write_lora  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-xyz-") as folder:
        flags = ["--data-dir", folder, "--nowebui"]
        if args.full:
            available = mem_available_gb()
            if available < 10:
                print(f"only {available:.1f} GB available; the full-size run needs 10 GB", file=sys.stderr)
                return 2
            checkpoint = ensure_full_checkpoint()
            flags += ["--ckpt-dir", str(checkpoint.parent), "--no-embedded-default"]
        webui = WebUI.create(flags)
        model = webui.models.load(FULL_CHECKPOINT) if args.full else webui.models.get()
        write_lora(webui.paths.lora_dir / f"{LORA}.safetensors", model, "locon", args.rank, seed=1)
        webui.services["lora"].registry.refresh()
        PatchProbe.engine = webui.services["lora"]
        probe = types.ModuleType(PatchProbe.__module__)
        probe.PatchProbe = PatchProbe
        webui.scripts.add_module(probe)
        thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
        base = {"prompt": f"a lighthouse <lora:{LORA}:1>", "steps": args.steps, "width": args.size,
                "height": args.size, "sampler_name": "Euler"}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{thread.port}", timeout=3600) as client:
                run(client, {**base, "prompt": "warm-up"})
                weight_axis = next(s for s in client.get("/sdapi/v1/script-info").json()
                                   if s["name"] == "x/y/z plot")["args"][0]["choices"].index("Lora weight")
                script_args = [weight_axis, f"{LORA}: {WEIGHTS}", [], 1, ", ".join(map(str, SEEDS)), [], 0, "", [],
                               True, True, False, False, False, False, False, 0, False]

                def grid() -> list[Image.Image]:
                    body = run(client, {**base, "script_name": "x/y/z plot", "script_args": script_args})
                    return [png(b64) for b64 in body["images"][1:]]

                def separate() -> list[Image.Image]:
                    images = []
                    for seed in SEEDS:  # rows (Y = seed), then across (X = weight): the client's grid loop
                        for weight in WEIGHT_VALUES:
                            body = run(client, {**base, "prompt": f"a lighthouse <lora:{LORA}:{weight}>",
                                                "seed": seed})
                            images.append(png(body["images"][0]))
                    return images

                grid_wall, grid_records, grid_images = measure(webui, grid)
                sep_wall, sep_records, sep_images = measure(webui, separate)
        finally:
            thread.stop()
        identical = len(grid_images) == len(sep_images) == 25 and all(
            ImageChops.difference(a, b).getbbox() is None for a, b in zip(grid_images, sep_images))
        layers = max(touched for _, touched in grid_records + sep_records)
        rows = []
        for label, wall, records in (("X/Y/Z plot, 1 call", grid_wall, grid_records),
                                     ("25 separate calls", sep_wall, sep_records)):
            patch = sum(seconds for seconds, _ in records)
            events = sum(1 for _, touched in records if touched)
            touched = sum(t for _, t in records)
            rows.append((label, wall, patch, patch / wall, events, touched))
        name = "full-size SD1.5 (random weights, fp32)" if args.full else "embedded default (tiny SD1)"
        print(f"\n5 x 5 grid, Lora weight x seed: {name}, {args.size}x{args.size} px, {args.steps} steps, "
              f"LoCon rank {args.rank} on {layers} layers, CPU threads {os.cpu_count()}")
        print(f"{'':24}{'wall s':>10}{'patch s':>10}{'patch share':>13}{'patches':>9}{'layers rewritten':>18}")
        for label, wall, patch, share, events, touched in rows:
            print(f"{label:24}{wall:10.2f}{patch:10.3f}{share:12.1%}{events:9d}{touched:18d}")
        (g, s) = rows
        print(f"{'separate / grid':24}{s[1] / g[1]:9.2f}x{s[2] / max(g[2], 1e-9):9.2f}x"
              f"{'':13}{s[4] / max(g[4], 1):8.1f}x{s[5] / max(g[5], 1):17.1f}x")
        print(f"grid patches: 1 first apply + {g[4] - 1} multiplier rewrites of the same {layers} layers; "
              f"cells bitwise equal to the separate images: {'yes' if identical else 'NO'}")
        print(json.dumps({"grid": rows[0][1:], "separate": rows[1][1:], "identical": identical}))
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
