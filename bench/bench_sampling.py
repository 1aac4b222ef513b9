"""Benchmark of sampling speed: the WebUI's own denoising loop against diffusers' own pipeline, same model and work.

Usage: `venv/bin/python -m bench.bench_sampling [--sdxl] [--tiny] [--device cpu|cuda] [--dtype ...] [--size 512]
[--steps 6]`

Method
* Model: the full-size random-weight checkpoint (`bench.checkpoints`: SD1.5 in float32, or with `--sdxl` SDXL in
  bfloat16 on CPU, where float32 SDXL does not fit beside the other jobs; float16 on CUDA), loaded once through the
  WebUI (`WebUI.create` + `ModelManager.load`); diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline` is
  built from the *same* module objects, so both sides run the same weights in the same memory. `--tiny`: the tiny
  test config of the family instead (float32 by default), whose UNet call takes milliseconds, so the step is mostly
  the loop's own work around it.
* Work: txt2img, sampler Euler (`EulerDiscreteScheduler` on both sides, the model's training schedule), CFG 7 (batch 2
  through the UNet per step), `--size` px, `--steps` steps, one image, the same prompt and seed.
* Timing, the same on both sides: forward hooks on the shared UNet stamp the start and end of every UNet call (one
  per step: cond + uncond in one batch). Seconds per step = (start of the last call - start of the second call) /
  (steps - 2), i.e. steps 2 .. N-1 in full, everything the loop does between two UNet calls included, the first
  (warm-up) step, the text encoders and the VAE decode outside it; UNet s = the mean duration of those calls; loop
  overhead = per step - UNet. Ours runs without LoRA before and after diffusers (best kept) and with a rank-32 kohya
  LoCon over every layer kohya's LoCon trains merged (`<lora:locon:1>`): merged weights are the no-LoRA code path,
  so that row should match.
* Printed: a Markdown table with seconds per step, UNet seconds, loop overhead in ms and the ratio to diffusers.
"""

from __future__ import annotations

import argparse
import logging
import math
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


class UNetClock:
    """Start and end times of every call of a UNet, by forward hooks (both sides run the same module object)."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.calls: list[list[float]] = []
        self.handles = [unet.register_forward_pre_hook(lambda module, args: self.calls.append([time.perf_counter()])),
                        unet.register_forward_hook(lambda module, args, out: self.calls[-1].append(time.perf_counter()))]

    def close(self) -> None:
        """Remove the hooks."""
        for handle in self.handles:
            handle.remove()

    def step_seconds(self, steps: int) -> tuple[float, float]:
        """(seconds per step, UNet seconds per step) over steps 2 .. N-1 (see the module docstring)."""
        if len(self.calls) != steps or steps < 3:
            raise RuntimeError(f"need one UNet call per step and 3 steps or more; got {len(self.calls)} calls for "
                               f"{steps} steps")
        starts = [call[0] for call in self.calls]
        window = self.calls[1:-1]
        return (starts[-1] - starts[1]) / (steps - 2), sum(end - start for start, end in window) / len(window)


def our_step_seconds(webui, model, prompt: str, size: int, steps: int, seed: int) -> tuple[float, float, float]:
    """(seconds per step, UNet seconds per step, whole call seconds) of the WebUI's txt2img for `prompt`."""
    from modules.processing import StableDiffusionProcessingTxt2Img, process_images  # noqa: PLC0415

    p = StableDiffusionProcessingTxt2Img(prompt=prompt, negative_prompt=NEGATIVE, seed=seed, sampler_name="Euler",
                                         scheduler="Automatic", steps=steps, cfg_scale=7.0, width=size, height=size)
    clock = UNetClock(model.unet)
    start = time.perf_counter()
    try:
        with webui.queue_lock:
            processed = process_images(webui, p)
    finally:
        clock.close()
    whole = time.perf_counter() - start
    comments = [c for c in getattr(processed, "comments", []) if c]
    if comments:
        log.info("comments: %s", comments)
    return (*clock.step_seconds(steps), whole)


def diffusers_step_seconds(model, size: int, steps: int, seed: int) -> tuple[float, float, float]:
    """(seconds per step, UNet seconds per step, whole call seconds) of diffusers' own pipeline on the same
    modules."""
    pipe = diffusers_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(seed)
    clock = UNetClock(model.unet)
    start = time.perf_counter()
    try:
        pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0, height=size, width=size,
             generator=generator, output_type="latent")
    finally:
        clock.close()
    whole = time.perf_counter() - start
    return (*clock.step_seconds(steps), whole)


def dtype_read_ms(unet: torch.nn.Module, repeats: int = 10) -> float:
    """Milliseconds of one `unet.dtype` (diffusers' `ModelMixin.dtype` walks every submodule), best of `repeats`."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        _ = unet.dtype
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main(argv: list[str] | None = None) -> int:
    """Load the model, run ours / diffusers / ours with LoRA / ours again, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="the family's tiny test config (loop overhead)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="default: float32 (SD1.5, --tiny) / bfloat16 (SDXL) on CPU, float16 on CUDA")
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
    elif device.type == "cuda":
        dtype = torch.float16
    else:
        dtype = torch.bfloat16 if args.sdxl and not args.tiny else torch.float32
    load_avg = os.getloadavg()

    from modules.host import WebUI  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench_sampling_") as tmp:
        if args.tiny:
            from modules.tiny_models import write_single_file  # noqa: PLC0415

            ckpt = write_single_file(Path(tmp) / "checkpoint" / f"tiny-{family.lower()}.safetensors", family, seed=1,
                                     dtype=dtype)
        else:
            ckpt = random_checkpoint(args.models, family, dtype)
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
        modules_count = sum(1 for _ in model.unet.modules())
        dtype_ms = dtype_read_ms(model.unet)
        log.info("ours, no LoRA")
        ours = [our_step_seconds(webui, model, PROMPT, args.size, args.steps, 1)]
        log.info("diffusers")
        theirs = diffusers_step_seconds(model, args.size, args.steps, 1)
        log.info("ours, LoRA merged")
        merged = our_step_seconds(webui, model, f"{PROMPT} <lora:locon:1>", args.size, args.steps, 1)
        log.info("ours, no LoRA again")
        ours.append(our_step_seconds(webui, model, PROMPT, args.size, args.steps, 1))
    best = min(ours, key=lambda row: row[0])
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), torch "
          f"{torch.__version__}, device {device}" + (f" ({torch.cuda.get_device_name(device)})"
                                                      if device.type == "cuda" else "")
          + f"; load average {load_avg[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"Model: {family} {'tiny test config' if args.tiny else 'full size'}, random weights, "
          f"{str(dtype).removeprefix('torch.')}; Euler, CFG 7, {args.size}x{args.size}, {args.steps} steps, batch 1 "
          f"(2 UNet rows per step); LoRA: kohya LoCon rank 32, {len(flops)} layers")
    print(f"UNet: {modules_count} modules; one `unet.dtype` read (diffusers walks every submodule) {dtype_ms:.1f} ms\n")

    def row(name: str, values: tuple[float, float, float], notes: str) -> str:
        step, unet, whole = values
        return (f"| {name} | {step:.3f} | {unet:.3f} | {(step - unet) * 1000:.1f} | {step / theirs[0]:.2f}x | "
                f"{whole:.1f} | {notes} |")

    print("| run | seconds per step | UNet call, s | loop overhead, ms per step | x diffusers | whole call, s | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    print(row(f"diffusers {'StableDiffusionXLPipeline' if model.is_sdxl else 'StableDiffusionPipeline'}", theirs,
              "output_type=latent (no VAE decode)"))
    print(row("ours, no LoRA", best, "best of " + ", ".join(f"{r[0]:.3f}" for r in ours)
              + " s (before/after diffusers); whole call includes VAE decode"))
    print(row("ours, LoRA merged", merged, f"{merged[0] / best[0]:.2f}x our no-LoRA step; whole call includes the "
              "first apply"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
