"""Benchmark of sampling speed: the WebUI's own denoising loop against diffusers' own pipeline, same model and work.

Usage: `venv/bin/python -m bench.bench_sampling [--sdxl] [--device cpu|cuda] [--dtype ...] [--size 512] [--steps 6]`

Method
* Model: the full-size random-weight checkpoint (`bench.checkpoints`: SD1.5 in float32, or with `--sdxl` SDXL in
  bfloat16 on CPU, where float32 SDXL does not fit beside the other jobs; float16 on CUDA), loaded once through the
  WebUI (`WebUI.create` + `ModelManager.load`); diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline` is
  built from the *same* module objects, so both sides run the same weights in the same memory.
* Work: txt2img, sampler Euler (`EulerDiscreteScheduler` on both sides, the model's training schedule), CFG 7 (batch 2
  through the UNet per step), `--size` px, `--steps` steps, one image, the same prompt and seed.
* Seconds per step: the mean interval between consecutive step callbacks (ours: the `process_step` callback before each
  UNet evaluation; diffusers: `callback_on_step_end`), so the text encoder, the VAE decode and the first (warm-up) step
  are outside it on both sides. Ours runs without LoRA before and after diffusers (best kept) and with a rank-32 kohya
  LoCon over 350 layers merged (`<lora:locon:1>`): merged weights are the no-LoRA code path, so that row should match.
* Printed: a Markdown table with seconds per step and the ratio to diffusers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.bench_lora_apply import DTYPES, cpu_model, diffusers_pipeline, write_lora
from bench.checkpoints import DEFAULT_FOLDER, random_checkpoint
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import load_layout

log = logging.getLogger("bench_sampling")
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
NEGATIVE = "blurry"


def our_step_seconds(webui, model, prompt: str, size: int, steps: int, seed: int) -> tuple[float, float]:
    """(seconds per step, whole call seconds) of the WebUI's txt2img for `prompt`."""
    from modules.processing import StableDiffusionProcessingTxt2Img, process_images  # noqa: PLC0415

    stamps: list[float] = []

    def on_step(p, step, total):
        stamps.append(time.perf_counter())

    webui.callbacks.add("process_step", on_step)
    p = StableDiffusionProcessingTxt2Img(prompt=prompt, negative_prompt=NEGATIVE, seed=seed, sampler_name="Euler",
                                         scheduler="Automatic", steps=steps, cfg_scale=7.0, width=size, height=size)
    start = time.perf_counter()
    with webui.queue_lock:
        processed = process_images(webui, p)
    whole = time.perf_counter() - start
    webui.callbacks.remove("process_step", on_step)
    comments = [c for c in getattr(processed, "comments", []) if c]
    if comments:
        log.info("comments: %s", comments)
    return _interval(stamps), whole


def _interval(stamps: list[float]) -> float:
    if len(stamps) < 2:
        raise RuntimeError("need at least 2 steps to time one")
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def diffusers_step_seconds(model, size: int, steps: int, seed: int) -> tuple[float, float]:
    """(seconds per step, whole call seconds) of diffusers' own pipeline on the same modules."""
    pipe = diffusers_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    stamps: list[float] = []

    def on_step_end(pipeline, step, timestep, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    generator = torch.Generator("cpu").manual_seed(seed)
    start = time.perf_counter()
    pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0, height=size, width=size,
         generator=generator, output_type="latent", callback_on_step_end=on_step_end)
    whole = time.perf_counter() - start
    return _interval(stamps), whole


def main(argv: list[str] | None = None) -> int:
    """Load the model, run ours / diffusers / ours with LoRA / ours again, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: float32 (SD1.5) / bfloat16 (SDXL) on CPU, float16 on CUDA")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--models", type=Path, default=DEFAULT_FOLDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    warnings.filterwarnings("ignore")
    for noisy in ("diffusers", "transformers", "lorakit", "modules"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    device = torch.device(args.device)
    family = "SDXL" if args.sdxl else "SD1"
    if args.dtype:
        dtype = DTYPES[args.dtype]
    else:
        dtype = torch.float16 if device.type == "cuda" else (torch.bfloat16 if args.sdxl else torch.float32)
    ckpt = random_checkpoint(args.models, family, dtype)
    load_avg = os.getloadavg()

    from modules.host import WebUI  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench_sampling_") as tmp:
        lora_dir = Path(tmp) / "models" / "Lora"
        lora_dir.mkdir(parents=True)
        layout = load_layout(CheckpointInfo(path=ckpt, name=ckpt.name, format="single-file"))
        flops = write_lora(lora_dir / "locon.safetensors", layout, "locon", 32, seed=1)
        del layout
        webui = WebUI.create(["--data-dir", tmp, "--ckpt-dir", str(ckpt.parent), "--no-embedded-default",
                              "--device", args.device, "--precision", str(dtype).removeprefix("torch."),
                              "--no-hashing"])
        webui.options.set("samples_save", False)
        log.info("loading %s", ckpt)
        model = webui.models.load(CheckpointInfo(path=ckpt, name=ckpt.name, format="single-file"))
        log.info("ours, no LoRA")
        ours = [our_step_seconds(webui, model, PROMPT, args.size, args.steps, 1)]
        log.info("diffusers")
        theirs = diffusers_step_seconds(model, args.size, args.steps, 1)
        log.info("ours, LoRA merged")
        merged = our_step_seconds(webui, model, f"{PROMPT} <lora:locon:1>", args.size, args.steps, 1)
        log.info("ours, no LoRA again")
        ours.append(our_step_seconds(webui, model, PROMPT, args.size, args.steps, 1))
    best = min(ours, key=lambda pair: pair[0])
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), torch "
          f"{torch.__version__}, device {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                                      if device.type == "cuda" else "")
          + f"; load average {load_avg[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"Model: {family} full size, random weights, {str(dtype).removeprefix('torch.')}; Euler, CFG 7, "
          f"{args.size}x{args.size}, {args.steps} steps, batch 1 (2 UNet rows per step); LoRA: kohya LoCon rank 32, "
          f"{len(flops)} layers\n")
    print("| run | seconds per step | x diffusers | whole call, s | notes |")
    print("|---|---:|---:|---:|---|")
    print(f"| diffusers {'StableDiffusionXLPipeline' if model.is_sdxl else 'StableDiffusionPipeline'} "
          f"| {theirs[0]:.3f} | 1.00x | {theirs[1]:.1f} | output_type=latent (no VAE decode) |")
    print(f"| ours, no LoRA | {best[0]:.3f} | {best[0] / theirs[0]:.2f}x | {best[1]:.1f} | best of "
          + ", ".join(f"{s:.3f}" for s, _ in ours) + " s (before/after diffusers); whole call includes VAE decode |")
    print(f"| ours, LoRA merged | {merged[0]:.3f} | {merged[0] / theirs[0]:.2f}x | {merged[1]:.1f} | "
          f"{merged[0] / best[0]:.2f}x our no-LoRA step; whole call includes the first apply |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
