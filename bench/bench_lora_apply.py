"""Benchmark of LoRA switching in the built-in Lora engine, against this machine's floor and against diffusers.

Usage: `venv/bin/python -m bench.bench_lora_apply [--quick] [--sdxl] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
[--rank 32] [--algos locon,loha,lokr] [--skip-diffusers] [--steps 2] [--profile]`

Method
* Model: the full-size SD1.5 (or, with `--sdxl`, SDXL) UNet, VAE and text encoder(s) are built from the configs shipped in
  `modules/model_configs/` on the meta device, materialised on `--device` in `--dtype` and filled with seeded random
  weights (normal, std 1/sqrt(fan_in); norms 1, biases 0). `--quick` uses the tiny test configs instead.
* LoRA files (two per algorithm, A and B, different seeds), written as kohya/LyCORIS safetensors (fp16 tensors, kohya
  key names `lora_unet_...`, `lora_te_...`; SDXL: SGM block names and `lora_te1_`/`lora_te2_`) over what kohya's LoCon
  trains: every Linear/Conv2d of the UNet's transformer, resnet, down- and up-sampler blocks, and the text encoders'
  attention and MLP Linear layers. LoCon: rank `--rank` (alpha = rank/2); LoHa: rank 16 Linear / 8 conv;
  LoKr: LyCORIS' `factor=8` with both Kronecker halves full (its usual large-`dim` setting).
* Engine rows: each is one `LoraEngine.activate` call; "seconds" is the patcher's own time (`PatchStats.seconds`);
  the file-load row is the wall time of the first activation minus its patch time (read + group + resolve + hash).
* Floor of a row: max(bytes / bandwidth, FLOPs / matmul rate), where bytes = the touched weights read (pristine
  copy) + written, bandwidth = the best of several `dst.copy_(src)` on a 1 GiB tensor counted as read + write, FLOPs =
  the matrix products of the deltas the row had to compute (LoCon 2·out·in·r per layer, LoHa two such products,
  LoKr one multiply per element), and the matmul rate = the best `addmm(W, up, down)` rate on the LoRA's own shapes
  ((out x r) @ (r x in), out = in = 1280, r = the rank), the operation the deltas need. A 4096^2 matmul rate is shown
  for reference.
* diffusers rows (LoCon only; diffusers has no kohya LoHa/LoKr loader): `StableDiffusionPipeline` (or SDXL's) built
  from the same modules after the engine restored them bitwise; `load_lora_weights` (its kohya converter + PEFT
  injection), `fuse_lora`, `unfuse_lora`, switch = unfuse + fuse of the other adapter, strength = unfuse + fuse
  with `lora_scale`; `unload_lora_weights` at the end removes the PEFT layers.
* Generation speed: UNet forward steps at 64x64 latents (512 px; SDXL 128x128) batch 2, without LoRA, with the
  engine's merged LoRA, and with diffusers' unfused PEFT layers.
Peak resident memory is the process's VmHWM (Linux); the load average is printed since other jobs skew timings.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import logging
import math
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
# Run from the repository root as `python -m bench.<name>` (the root is then on sys.path); the Lora extension's
# folder offers its imports as the WebUI's extension loader does.
from modules.extensions import EXTENSION_IMPORTS  # noqa: E402

EXTENSION_IMPORTS.offer(ROOT / "extensions-builtin" / "Lora")

from safetensors.torch import save_file  # noqa: E402

from bench.checkpoints import DEFAULT_FOLDER, diffusers_folder, random_checkpoint  # noqa: E402
from lorakit.engine.engine import LoraEngine, NetworkRequest  # noqa: E402
from lorakit.engine.patcher import Patcher, compute_dtype  # noqa: E402
from lorakit.library.registry import NetworkRegistry  # noqa: E402
from modules.model_configs import build_components, family_config  # noqa: E402
from modules.sd_model_types import CheckpointInfo, LoadedModel  # noqa: E402
from modules.sd_models import load_checkpoint  # noqa: E402
from modules.tiny_models import single_file_state_dict  # noqa: E402

log = logging.getLogger("bench_lora_apply")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GIB = 1 << 30
MODE_TEXT = {"file": "the checkpoint file", "copies": "backup copies"}


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_split() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process: RssAnon (private memory: tensors, heap) and
    RssFile + RssShmem (pages of mapped files, e.g. the memory-mapped checkpoint, held in the shared page cache)."""
    return rss_bytes("RssAnon"), rss_bytes("RssFile") + rss_bytes("RssShmem")


def rss_bytes(field_name: str = "VmRSS") -> int:
    """Resident memory of this process (VmRSS), or its peak (VmHWM), from /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def sync(device: torch.device) -> None:
    """Wait for queued kernels on an accelerator (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory(device: torch.device) -> None:
    """Collect garbage and return cached accelerator memory between phases."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_bandwidth(device: torch.device, size: int, repeats: int = 4) -> float:
    """Best copy bandwidth in bytes/s (read + write counted) of `dst.copy_(src)` on a `size`-byte tensor."""
    src = torch.ones(size // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * size / best


def measure_matmul(device: torch.device, dtype: torch.dtype, out: int, inner: int, cols: int,
                   repeats: int = 5) -> float:
    """Best rate in FLOP/s of `W.addmm_(A, B)` with A (out x inner), B (inner x cols) into an existing W."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(out, inner, generator=gen).to(device, dtype)
    b = torch.randn(inner, cols, generator=gen).to(device, dtype)
    w = torch.zeros(out, cols, device=device, dtype=dtype)
    w.addmm_(a, b)
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        w.addmm_(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * out * inner * cols / best


# ------------------------------------------------------------------------------------------------ model
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with seeded random values: matrices N(0, 1/fan_in), norm weights 1, biases 0."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 1.0 / math.sqrt(param[0].numel()))
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
        for name, buffer in module.named_buffers():
            if name.endswith("position_ids"):
                buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))


def build_model(family: str, quick: bool, device: torch.device, dtype: torch.dtype, folder: Path,
                models: Path, fmt: str = "single-file") -> LoadedModel:
    """A full-size (or, with `quick`, tiny) model of `family` with random weights, loaded on `device` the way the
    WebUI loads one (so the engine reads pristine weights back from the memory-mapped file). Full size: the
    checkpoint in `dtype` under `models` (`bench.checkpoints`: written tensor by tensor once, then reused), as a
    single file or (`fmt="diffusers"`) a diffusers folder made from it. Quick: a tiny single file in `folder`."""
    if not quick:
        path = random_checkpoint(models, family, dtype)
        if fmt == "diffusers":
            path = diffusers_folder(path, "cpu", dtype)
        return load_checkpoint(CheckpointInfo(path=path, name=path.name, format=fmt), device, dtype)
    config = family_config(family, tiny=quick)
    built = build_components(config, empty=True)
    parts = [built["unet"], built["vae"], *built["text_encoders"]]
    for seed, module in enumerate(parts):
        module.to_empty(device="cpu")
        randomize_(module, seed)
        module.eval().requires_grad_(False)
    built["config"] = config
    path = folder / "model.safetensors"
    save_file(single_file_state_dict(built, family, dtype=dtype), str(path))
    del built, parts
    gc.collect()
    return load_checkpoint(CheckpointInfo(path=path, name=path.name, format="single-file"), device, dtype)


def param_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ------------------------------------------------------------------------------------------------ LoRA files
UNET_PARTS = (".attentions.", ".resnets.", ".downsamplers.", ".upsamplers.")


def lora_targets(model: LoadedModel) -> list[tuple[str, str, torch.nn.Module]]:
    """(engine target name, kohya key, module) for every layer a kohya LoCon trains (see the module docstring)."""
    found: list[tuple[str, str, torch.nn.Module]] = []
    for name, module in model.unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or not any(p in f".{name}." for p in UNET_PARTS):
            continue
        path = model.ldm_unet_names[name] if model.is_sdxl else name
        found.append((f"unet.{name}", "lora_unet_" + path.replace(".", "_"), module))
    for index, encoder in enumerate(model.text_encoders):
        prefix = "lora_te_" if len(model.text_encoders) == 1 else f"lora_te{index + 1}_"
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}" and ("self_attn" in name or "mlp" in name):
                path = name[len("text_model."):] if name.startswith("text_model.") else name
                found.append((f"text_encoders.{index}.{name}", prefix + "text_model_" + path.replace(".", "_"), module))
    return found


def _divisor(n: int, choices: tuple[int, ...] = (8, 4, 2, 1)) -> int:
    return next(c for c in choices if n % c == 0)


def write_lora(path: Path, model: LoadedModel, algo: str, rank: int, seed: int) -> dict[str, float]:
    """Write a kohya/LyCORIS file of `algo` for the model's LoCon targets; return {target name: delta FLOPs}."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).half()

    tensors: dict[str, torch.Tensor] = {}
    flops: dict[str, float] = {}
    for target, key, module in lora_targets(model):
        shape = tuple(module.weight.shape)
        out, fan_in = shape[0], math.prod(shape[1:])
        conv = len(shape) == 4
        if algo == "locon":
            tensors[f"{key}.lora_down.weight"] = rand(rank, *shape[1:]) if conv else rand(rank, fan_in)
            tensors[f"{key}.lora_up.weight"] = rand(out, rank, 1, 1) if conv else rand(out, rank)
            tensors[f"{key}.alpha"] = torch.tensor(rank / 2)
            flops[target] = 2.0 * out * fan_in * rank
        elif algo == "loha":
            r = 8 if conv else 16
            for i in (1, 2):
                tensors[f"{key}.hada_w{i}_a"] = rand(out, r)
                tensors[f"{key}.hada_w{i}_b"] = rand(r, fan_in)
            tensors[f"{key}.alpha"] = torch.tensor(float(r))
            flops[target] = 2 * 2.0 * out * fan_in * r + out * fan_in
        elif algo == "lokr":
            f_out, f_in = _divisor(out), _divisor(shape[1])
            tensors[f"{key}.lokr_w1"] = rand(f_out, f_in)
            tensors[f"{key}.lokr_w2"] = rand(out // f_out, shape[1] // f_in, *shape[2:])
            tensors[f"{key}.alpha"] = torch.tensor(1.0)
            flops[target] = float(out * fan_in)
        else:
            raise ValueError(f"unknown algorithm {algo!r} (locon, loha, lokr)")
    metadata = {"ss_network_module": {"locon": "networks.lora", "loha": "lycoris.kohya", "lokr": "lycoris.kohya"}[algo],
                "ss_network_dim": str(rank), "ss_base_model_version": "sdxl_base_v1-0" if model.is_sdxl else "sd_v1"}
    save_file(tensors, str(path), metadata=metadata)
    return flops


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class Row:
    """One line of the result table."""

    operation: str
    seconds: float
    work: tuple[float, float] | None = None  # (bytes read + written, FLOPs) the floor is computed from
    diffusers: float | None = None
    layers: int | None = None
    notes: str = ""
    kernels: float | None = None  # the same copies and products as bare torch calls on scratch tensors
    memory: tuple[int, int, int, int] | None = None  # anonymous after, its change, file-backed after, its change


@dataclass
class Machine:
    """Measured machine constants used for the floor."""

    bandwidth: float
    matmul_rate: float
    matmul_square: float
    notes: list[str] = field(default_factory=list)

    def floor(self, nbytes: float, flops: float) -> float:
        """The larger of the memory time and the arithmetic time."""
        return max(nbytes / self.bandwidth, flops / self.matmul_rate)


def kernel_times(model: LoadedModel, rank: int, device: torch.device) -> dict[str, tuple[float, float]]:
    """{target: (copy seconds, addmm seconds)}: the best of 3 bare `W.copy_(W0)` and `W.addmm_(up, down)` (rank
    `rank`, the compute dtype) on scratch tensors of each target's flattened weight shape, timed once per shape.

    Their sum over a row's layers is what the same work costs with nothing but the two kernels per layer: the
    engine's overhead is its time over that sum."""
    by_shape: dict[tuple[int, int], tuple[float, float]] = {}
    result: dict[str, tuple[float, float]] = {}
    for name, _, module in lora_targets(model):
        shape = (module.weight.shape[0], module.weight[0].numel())
        if shape not in by_shape:
            by_shape[shape] = _bare_kernels(shape, rank, compute_dtype(module.weight), device)
        result[name] = by_shape[shape]
    return result


def _bare_kernels(shape: tuple[int, int], rank: int, dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    weight = torch.randn(shape, device=device, dtype=dtype)
    pristine = torch.randn(shape, device=device, dtype=dtype)
    up = torch.randn(shape[0], rank, device=device, dtype=dtype)
    down = torch.randn(rank, shape[1], device=device, dtype=dtype)
    copy_s = min(timed(lambda: weight.copy_(pristine), device)[0] for _ in range(3))
    addmm_s = min(timed(lambda: weight.addmm_(up, down), device)[0] for _ in range(3))
    return copy_s, addmm_s


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of `fn()`, synchronising the accelerator around it."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def layer_bytes(model: LoadedModel, names: list[str]) -> int:
    """Bytes of weight (+ bias) of the named engine targets."""
    modules = {f"unet.{n}": m for n, m in model.unet.named_modules()}
    for index, encoder in enumerate(model.text_encoders):
        modules.update({f"text_encoders.{index}.{n}": m for n, m in encoder.named_modules()})
    total = 0
    for name in names:
        module = modules[name]
        total += module.weight.numel() * module.weight.element_size()
        if getattr(module, "bias", None) is not None:
            total += module.bias.numel() * module.bias.element_size()
    return total


def unet_steps(model: LoadedModel, steps: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per UNet forward at 512 px (SDXL 1024 px) batch 2, mean over `steps` after one warm-up step."""
    unet = model.unet
    size = unet.config.sample_size if unet.config.sample_size else 64
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, size, size, generator=gen).to(device, dtype)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen).to(device, dtype)
    kwargs: dict[str, Any] = {}
    if model.is_sdxl:
        pooled = model.text_encoders[1].config.projection_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(2, pooled, device=device, dtype=dtype),
                                       "time_ids": torch.zeros(2, 6, device=device, dtype=dtype)}
    timestep = torch.tensor([500, 500], device=device)
    with torch.inference_mode():
        unet(latents, timestep, encoder_hidden_states=context, **kwargs)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            unet(latents, timestep, encoder_hidden_states=context, **kwargs)
        sync(device)
    return (time.perf_counter() - start) / steps


def engine_rows(model: LoadedModel, machine: Machine, folder: Path, algo: str, flops: dict[str, float],
                device: torch.device, profile: bool, rounds: int, copies: bool,
                kernels: dict[str, tuple[float, float]] | None) -> tuple[list[Row], dict[str, Any]]:
    """Run the engine's sequence on files `{algo}_a`/`{algo}_b` `rounds` times (best time per row; the file loads
    happen in round 1 only); return the rows and facts for later phases. `copies`: the patcher holds backup copies
    instead of reading pristine weights back from the checkpoint file."""
    registry = NetworkRegistry([folder], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    if copies:
        engine.patcher = Patcher()
    a, b = f"{algo}_a", f"{algo}_b"
    rows: dict[str, Row] = {}
    facts: dict[str, Any] = {}

    def step(label: str, requests: list[NetworkRequest], notes: str = "", load_row: str | None = None) -> Any:
        anon0, file0 = memory_split()
        wall, report = timed(lambda: engine.activate(requests), device)
        anon1, file1 = memory_split()
        if report.errors:
            raise RuntimeError(f"{label}: {report.errors}")
        stats = report.stats
        if load_row and load_row not in rows:
            rows[load_row] = Row(load_row, wall - stats.seconds, notes="read + group + resolve + SHA-256")
        if label in rows:
            rows[label].seconds = min(rows[label].seconds, stats.seconds)
        else:
            nbytes = 2 * layer_bytes(model, stats.touched)
            work = sum(flops[n] * len(engine.patcher.applied(n)) for n in stats.touched)
            extra = (f"backup {engine.patcher.backup_bytes / GIB:.2f} GiB; W0 read in full for "
                     f"{stats.pristine_reads} layers; {notes}").rstrip("; ")
            bare = None
            if kernels is not None and stats.layers_touched:
                # The bare work: one copy of W0 where the patcher read it (not on a first apply: the layer holds W0),
                # one rank-r addmm per contribution.
                copies = stats.pristine_reads > 0
                bare = sum(kernels[n][0] * copies + kernels[n][1] * len(engine.patcher.applied(n))
                           for n in stats.touched)
            rows[label] = Row(label, stats.seconds, (nbytes, work) if stats.layers_touched else None,
                              layers=stats.layers_touched, notes=extra, kernels=bare,
                              memory=(anon1, anon1 - anon0, file1, file1 - file0))
        log.info("%s: %.3f s (%d layers)", label, stats.seconds, stats.layers_touched)
        return report

    for round_index in range(rounds):
        step(f"first apply {a}", [NetworkRequest(a)], load_row=f"file load {a}")
        if round_index == 0:
            facts["backup_bytes"] = engine.patcher.backup_bytes
            facts["rss_applied"] = rss_bytes()
        profiler = cProfile.Profile() if profile and round_index == 0 else None
        if profiler:
            profiler.enable()
        step(f"switch {a} -> {b}", [NetworkRequest(b)], notes=f"round 1 also loads {b} (row above)",
             load_row=f"file load {b}")
        if profiler:
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(16)
            facts["profile"] = text.getvalue()
        step(f"switch {b} -> {a}", [NetworkRequest(a)], notes="both files in memory")
        step("strength 1.0 -> 0.5", [NetworkRequest(a, 0.5, 0.5)])
        step("repeat, same set", [NetworkRequest(a, 0.5, 0.5)], notes="nothing to do")
        step(f"stack {a} + {b}", [NetworkRequest(a), NetworkRequest(b)])
        step("remove all", [], notes="bitwise restore from " + ("backup copies" if copies else "the checkpoint file"))
    facts["engine"] = engine
    return list(rows.values()), facts


def diffusers_pipeline(model: LoadedModel) -> Any:
    """diffusers' own StableDiffusion(XL)Pipeline (or FluxPipeline) over the loaded model's modules (same weights,
    same memory), with an Euler scheduler from the model's scheduler config."""
    from diffusers import (  # noqa: PLC0415
        EulerDiscreteScheduler,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if model.is_flux:
        return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
                            vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0],
                            text_encoder_2=model.text_encoders[1], tokenizer_2=model.tokenizers[1],
                            transformer=model.unet)
    scheduler = EulerDiscreteScheduler.from_config(model.scheduler_config)
    if model.is_sdxl:
        return StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoders[0], text_encoder_2=model.text_encoders[1],
            tokenizer=model.tokenizers[0], tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler)
    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def diffusers_rows(model: LoadedModel, machine: Machine, folder: Path, device: torch.device,
                   dtype: torch.dtype, steps: int, algo: str = "locon") -> tuple[dict[str, Any], float | None]:
    """diffusers' load/fuse/unfuse times on the same modules and files (`{algo}_a`, `{algo}_b`); also its unfused
    per-step time (`steps` > 0, UNet models)."""
    pipe = diffusers_pipeline(model)
    times: dict[str, Any] = {}
    times["load_a"], _ = timed(lambda: pipe.load_lora_weights(str(folder / f"{algo}_a.safetensors"), adapter_name="a"),
                               device)
    times["load_b"], _ = timed(lambda: pipe.load_lora_weights(str(folder / f"{algo}_b.safetensors"), adapter_name="b"),
                               device)
    times["fuse"], _ = timed(lambda: pipe.fuse_lora(adapter_names=["a"]), device)
    log.info("diffusers load %.2f s, fuse %.2f s", times["load_a"], times["fuse"])
    times["peft_layers"] = {part: sum(1 for n, _ in module.named_modules() if n.endswith("lora_A"))
                            for part, module in (("unet", model.unet), *((f"te{i}", e) for i, e in
                                                                          enumerate(model.text_encoders)))}

    def switch(name: str, scale: float = 1.0) -> None:
        pipe.unfuse_lora()
        pipe.fuse_lora(adapter_names=[name], lora_scale=scale)

    times["switch_ab"], _ = timed(lambda: switch("b"), device)
    times["switch_ba"], _ = timed(lambda: switch("a"), device)
    times["strength"], _ = timed(lambda: switch("a", 0.5), device)
    times["stack"], _ = timed(lambda: (pipe.unfuse_lora(), pipe.set_adapters(["a", "b"]),
                                       pipe.fuse_lora(adapter_names=["a", "b"])), device)
    times["unfuse"], _ = timed(pipe.unfuse_lora, device)
    log.info("diffusers switch %.2f s, unfuse %.2f s", times["switch_ba"], times["unfuse"])
    unfused = None
    if steps:
        pipe.set_adapters(["a"])
        unfused = unet_steps(model, steps, device, dtype)
    times["unload"], _ = timed(pipe.unload_lora_weights, device)
    return times, unfused


# ------------------------------------------------------------------------------------------------ output
def fmt(value: float | None, digits: int = 3) -> str:
    """A number for the table, or an em dash."""
    return "—" if value is None else f"{value:.{digits}f}"


def ratio(value: float, reference: float | None) -> str:
    """value / reference as `N.NNx`, or an em dash."""
    if reference is None or reference <= 0:
        return "—"
    return f"{value / reference:.2f}x"


def print_table(title: str, rows: list[Row], machine: Machine) -> None:
    """The Markdown table of `rows`; floors from `machine`'s measured rates."""
    print(f"\n### {title}\n")
    print("| operation | seconds | x floor | x kernels | x diffusers | layers touched | anon MiB (change) "
          "| file-backed MiB (change) | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        floor = machine.floor(*row.work) if row.work else None
        notes = "; ".join(x for x in (f"floor {floor:.3f} s" if floor is not None else "",
                                      f"kernels {row.kernels:.3f} s" if row.kernels is not None else "", row.notes) if x)
        anon = file = "—"
        if row.memory is not None:
            anon = f"{row.memory[0] / 2**20:.0f} ({row.memory[1] / 2**20:+.0f})"
            file = f"{row.memory[2] / 2**20:.0f} ({row.memory[3] / 2**20:+.0f})"
        print(f"| {row.operation} | {fmt(row.seconds)} | {ratio(row.seconds, floor)} | {ratio(row.seconds, row.kernels)} | "
              f"{ratio(row.seconds, row.diffusers)} | {'—' if row.layers is None else row.layers} | {anon} | {file} "
              f"| {notes} |")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every phase, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model config: a smoke run in seconds")
    parser.add_argument("--sdxl", action="store_true", help="SDXL instead of SD1.5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype (default float32 on CPU, float16 on CUDA)")
    parser.add_argument("--rank", type=int, default=32, help="LoCon rank (default 32)")
    parser.add_argument("--algos", default="locon", help="comma list of locon, loha, lokr")
    parser.add_argument("--skip-diffusers", action="store_true", help="no diffusers comparison")
    parser.add_argument("--steps", type=int, default=2, help="timed UNet steps per variant (0: skip generation)")
    parser.add_argument("--rounds", type=int, default=2, help="engine sequence repeats; best time per row")
    parser.add_argument("--profile", action="store_true", help="cProfile the first switch (file load + patch); print the top costs")
    parser.add_argument("--backups", default="file,copies",
                        help="where the patcher reads pristine weights: file (the memory-mapped checkpoint), copies "
                             "(backup copies in RAM), or both (default file,copies; the last one also runs the "
                             "generation and diffusers rows)")
    parser.add_argument("--keep", type=Path, default=None, help="write the LoRA files here and keep them")
    parser.add_argument("--models", type=Path, default=DEFAULT_FOLDER,
                        help="where full-size random checkpoints are written once and reused (default %(default)s)")
    parser.add_argument("--format", choices=("single-file", "diffusers"), default="single-file",
                        help="load the checkpoint as an A1111 single file or as a diffusers folder made from it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("diffusers", "transformers", "peft", "lorakit.engine", "lorakit.library.registry"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # PEFT warns about the other adapter's "missing keys" on every load
    try:
        from diffusers.utils import logging as diffusers_logging  # noqa: PLC0415
        from transformers.utils import logging as transformers_logging  # noqa: PLC0415

        diffusers_logging.set_verbosity_error()
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    except ImportError:
        pass

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    family = "SDXL" if args.sdxl else "SD1"
    torch.set_flush_denormal(True)
    load_start = os.getloadavg()

    log.info("measuring copy bandwidth and matmul rate")
    bw = measure_bandwidth(device, GIB // 4 if args.quick else GIB)
    width = 1280
    machine = Machine(bandwidth=bw, matmul_rate=measure_matmul(device, torch.float32 if device.type == "cpu" else dtype,
                                                               width, args.rank, width, repeats=10),
                      matmul_square=measure_matmul(device, torch.float32 if device.type == "cpu" else dtype,
                                                   1024 if args.quick else 4096, 1024 if args.quick else 4096,
                                                   1024 if args.quick else 4096, repeats=2))
    free_memory(device)

    base_folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_lora_apply_"))
    folder = base_folder / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    (base_folder / "checkpoint").mkdir(exist_ok=True)
    log.info("building %s%s on %s (%s)", family, " (tiny)" if args.quick else "", device, dtype)
    mem_before_load = memory_split()
    build_s, model = timed(lambda: build_model(family, args.quick, device, dtype, base_folder / "checkpoint",
                                               args.models, args.format), device)
    gc.collect()
    mem_loaded = memory_split()
    unet_gb = param_bytes(model.unet) / 1e9
    te_gb = sum(param_bytes(e) for e in model.text_encoders) / 1e9
    modes = [m.strip() for m in args.backups.split(",") if m.strip()]
    sections: list[tuple[str, list[Row]]] = []
    summary: list[str] = []
    profile_text = ""
    try:
        for algo in algos:
            log.info("writing %s files", algo)
            flops = write_lora(folder / f"{algo}_a.safetensors", model, algo, args.rank, seed=1)
            write_lora(folder / f"{algo}_b.safetensors", model, algo, args.rank, seed=2)
            size_mb = (folder / f"{algo}_a.safetensors").stat().st_size / 1e6
            touched_gb = layer_bytes(model, [t for t, _, _ in lora_targets(model)]) / 1e9
            kernels = kernel_times(model, args.rank, device) if algo == "locon" else None
            by_mode: dict[str, list[Row]] = {}
            for mode in modes:
                log.info("engine sequence, W0 from %s", mode)
                mode_rows, facts = engine_rows(model, machine, folder, algo, flops, device,
                                               args.profile and algo == algos[0] and mode == modes[0],
                                               max(args.rounds, 1), copies=mode == "copies", kernels=kernels)
                by_mode[mode] = mode_rows
                profile_text = profile_text or facts.get("profile", "")
                summary.append(f"{algo}, W0 from {MODE_TEXT[mode]}: {len(flops)} layers, file {size_mb:.0f} MB, "
                               f"touched weights {touched_gb:.2f} GB, delta {sum(flops.values()) / 1e9:.1f} GFLOP, "
                               f"backup held {facts['backup_bytes'] / GIB:.2f} GiB, RSS with it applied "
                               f"{facts['rss_applied'] / GIB:.2f} GiB; delta working set: the two LoRA files in memory, "
                               f"{2 * size_mb:.0f} MB")
                engine = facts.pop("engine")
                if mode != modes[-1]:
                    del engine
                    free_memory(device)
            rows = by_mode[modes[-1]]
            base_steps: list[float] = []
            merged = unfused = None
            diffusers_only: list[Row] = []
            if args.steps:
                log.info("UNet steps without and with the merged LoRA")
                base_steps.append(unet_steps(model, args.steps, device, dtype))
                engine.activate([NetworkRequest(f"{algo}_a")])
                merged = unet_steps(model, args.steps, device, dtype)
                engine.deactivate_all()
            del engine
            free_memory(device)
            if algo == "locon" and not args.skip_diffusers:
                log.info("diffusers comparison")
                times, unfused = diffusers_rows(model, machine, folder, device, dtype, args.steps)
                by_label = {"file load": times["load_a"], "first apply": times["fuse"],
                            f"switch {algo}_a -> ": times["switch_ab"], f"switch {algo}_b -> ": times["switch_ba"],
                            "strength": times["strength"], "stack": times["stack"], "remove": times["unfuse"]}
                for row in (r for mode_rows in by_mode.values() for r in mode_rows):
                    for prefix, value in by_label.items():
                        if row.operation.startswith(prefix):
                            row.diffusers = value
                if unfused is not None:
                    log.info("UNet steps without LoRA again")
                    base_steps.append(unet_steps(model, args.steps, device, dtype))
                layers = ", ".join(f"{k} {v}" for k, v in times["peft_layers"].items())
                diffusers_only.append(Row("diffusers load_lora_weights", times["load_a"],
                                          notes=f"kohya converter + PEFT inject; LoRA layers per part: {layers}"))
                diffusers_only.append(Row("diffusers fuse_lora", times["fuse"]))
                diffusers_only.append(Row("diffusers unfuse + fuse (switch)", times["switch_ba"]))
                diffusers_only.append(Row("diffusers unfuse_lora", times["unfuse"], notes="subtracts the delta (not bitwise)"))
                diffusers_only.append(Row("diffusers unload_lora_weights", times["unload"]))
                free_memory(device)
            if merged is not None:
                base = min(base_steps)
                rows.append(Row("UNet step, no LoRA", base, notes=f"batch 2, {args.steps} steps; best of "
                                + ", ".join(f"{t:.2f}" for t in base_steps) + " s"
                                + (" (before/after diffusers)" if len(base_steps) > 1 else "")))
                rows.append(Row("UNet step, LoRA merged", merged, notes=f"{merged / base:.2f}x no-LoRA step"))
                if unfused is not None:
                    rows.append(Row("UNet step, diffusers unfused PEFT", unfused,
                                    notes=f"{unfused / base:.2f}x no-LoRA step"))
            rows.extend(diffusers_only)
            shape = {"locon": f"rank {args.rank}", "loha": "rank 16 Linear / 8 conv", "lokr": "factor 8, full halves"}[algo]
            for mode in modes:
                sections.append((f"{algo} ({family}, {shape}), W0 from {MODE_TEXT[mode]}", by_mode[mode]))
    finally:
        if args.keep is None:
            shutil.rmtree(base_folder, ignore_errors=True)

    load_end = os.getloadavg()
    machine.bandwidth = max(machine.bandwidth, measure_bandwidth(device, GIB // 4 if args.quick else GIB))
    machine.matmul_rate = max(machine.matmul_rate, measure_matmul(
        device, torch.float32 if device.type == "cpu" else dtype, width, args.rank, width, repeats=10))
    threads = torch.get_num_threads()
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores ({threads} torch threads), torch {torch.__version__}, "
          f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", dtype {str(dtype).replace('torch.', '')}")
    print(f"Load average (1/5/15 min): start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}")
    print(f"Copy bandwidth {machine.bandwidth / 1e9:.1f} GB/s (read + write, best of 4 on "
          f"{'256 MiB' if args.quick else '1 GiB'}); matmul {machine.matmul_rate / 1e9:.0f} GFLOP/s on "
          f"addmm ({width} x {args.rank}) @ ({args.rank} x {width}), "
          f"{machine.matmul_square / 1e9:.0f} GFLOP/s on a {1024 if args.quick else 4096}^2 matmul")
    print(f"Model: {family}{' tiny' if args.quick else ''}, UNet {unet_gb:.2f} GB, text encoder(s) {te_gb:.2f} GB, "
          f"loaded ({args.format}) in {build_s:.1f} s; peak RSS {rss_bytes('VmHWM') / GIB:.2f} GiB")
    print(f"Memory: anonymous {mem_before_load[0] / GIB:.2f} GiB before the load, {mem_loaded[0] / GIB:.2f} GiB "
          f"with the model loaded; file-backed {mem_before_load[1] / GIB:.2f} -> {mem_loaded[1] / GIB:.2f} GiB "
          f"(pages of mapped files this process touched; they live in the shared page cache and are reclaimable)")
    for line in summary:
        print(f"- {line}")
    for title, rows in sections:
        print_table(title, rows, machine)
    if profile_text:
        print("\ncProfile of the first switch A -> B (loads B, then patches; top by own time):\n")
        print("```\n" + profile_text.strip() + "\n```")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
