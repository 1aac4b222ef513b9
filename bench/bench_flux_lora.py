"""Benchmark of Flux.1 LoRA switching in the built-in Lora engine, against the machine's floor and against diffusers.

Usage: `venv/bin/python -m bench.bench_flux_lora [--quick] [--double 19] [--single 38] [--device cpu|cuda]
[--dtype float32|bfloat16] [--rank 16] [--rounds 2] [--skip-diffusers]`

Flux.1 (12B parameters: 24 GB in bfloat16, 48 GB in float32) fits only a GPU machine; its row is the default run
there (`--device cuda`, bfloat16). On a CPU machine the same code runs a Flux transformer of the real width (3072,
24 heads x 128) with fewer blocks (`--double 1 --single 2`: every layer shape of Flux.1, 2.5 GB in float32), or the
tiny test config (`--quick`).

Method
* Model: the Flux transformer from `modules/model_configs/flux.json` with `--double`/`--single` blocks, seeded random
  weights (normal, std 1/sqrt(fan_in); norms 1, biases 0) in `--dtype`, written as a BFL single file
  (`double_blocks.N.img_attn.qkv.weight`, ...) with tiny CLIP-L/T5/VAE companions (the LoRAs here touch only the
  transformer) and loaded the way the WebUI loads it (`sd_models.load_checkpoint`), so the engine reads pristine
  weights back from the file.
* LoRA files A and B (different seeds): kohya Flux layout (`lora_unet_double_blocks_0_img_attn_qkv`, ...), rank
  `--rank` (alpha = rank / 2), over every Linear of the double and single blocks, with BFL's fused projections
  (`img_attn.qkv`, `txt_attn.qkv`, `linear1` = q, k, v, mlp) as one LoRA each, the way kohya trains them.
* Rows and columns: those of `bench_lora_apply` (`engine_rows`, `diffusers_rows`, `print_table`): each engine row is one
  `LoraEngine.activate` (the patcher's own seconds), x floor = seconds / max(bytes read + written / copy bandwidth,
  delta FLOPs / addmm rate on the LoRA's shape), x diffusers = over `FluxPipeline.load_lora_weights` (its kohya
  converter + PEFT), `fuse_lora`, unfuse + fuse (switch, strength) and `unfuse_lora` on the same modules and files.
* Incremental: LoRA A (every block) stacked with C (single blocks only), then C's strength changed: the layers
  rewritten must be exactly C's (ComfyUI re-patches the whole Flux model on a strength change, #5714).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from bench.bench_lora_apply import (  # also offers the Lora extension's imports
    DTYPES,
    GIB,
    Machine,
    Row,
    cpu_model,
    diffusers_rows,
    engine_rows,
    free_memory,
    layer_bytes,
    measure_bandwidth,
    measure_matmul,
    param_bytes,
    print_table,
    randomize_,
    rss_bytes,
    timed,
)
from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from modules import checkpoint_convert, flux_model
from modules.safetensors_header import write_safetensors
from modules.sd_model_types import CheckpointInfo, LoadedModel
from modules.sd_models import load_checkpoint

log = logging.getLogger("bench_flux_lora")


def build_flux(folder: Path, quick: bool, double: int, single: int, device: torch.device,
               dtype: torch.dtype) -> LoadedModel:
    """The random-weight Flux transformer written as a BFL file in `folder` (+ tiny companions), loaded on `device`."""
    from tests.helpers import flux_factory  # noqa: PLC0415 - tiny companions, as the tests write them

    config = flux_model.base_config(tiny=quick)
    if not quick:
        config["transformer"].update(num_layers=double, num_single_layers=single)
    with torch.device("meta"):
        from diffusers import FluxTransformer2DModel  # noqa: PLC0415

        transformer = FluxTransformer2DModel.from_config(dict(config["transformer"]))
    transformer.to_empty(device="cpu")
    randomize_(transformer, seed=0)
    transformer.to(dtype)
    key_map, transforms = flux_model.bfl_key_map(config["transformer"], transformer.state_dict())
    state = checkpoint_convert.diffusers_to_ldm({"unet": transformer}, key_map, {"transforms": transforms})
    del transformer
    ckpt = write_safetensors(folder / "Stable-diffusion" / "flux-bench.safetensors",
                             {k: v.contiguous() for k, v in state.items()}, {"format": "pt"})
    del state
    gc.collect()
    flux_factory.write_companions(folder, seed=0)
    return load_checkpoint(CheckpointInfo(path=ckpt, name=ckpt.name, format="single-file"), device, dtype, folder)


def block_linears(model: LoadedModel, kinds: tuple[str, ...] = ("double_blocks.", "single_blocks.")
                  ) -> dict[str, list[str]]:
    """{BFL module of the `kinds` blocks: [engine targets it covers]} for every Linear there (fused ones once)."""
    found: dict[str, list[str]] = {}
    for path, target in flux_model.bfl_module_map(model.unet.config).items():
        bfl = target[0] if isinstance(target, tuple) else target
        if bfl.startswith(kinds) and isinstance(model.unet.get_submodule(path), torch.nn.Linear):
            found.setdefault(bfl, []).append(f"unet.{path}")
    return found


def write_flux_lora(path: Path, model: LoadedModel, rank: int, seed: int,
                    kinds: tuple[str, ...] = ("double_blocks.", "single_blocks.")) -> dict[str, float]:
    """A kohya Flux LoRA over the `kinds` blocks' Linears (see the module docstring); {engine target: delta FLOPs}."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.unet.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    flops: dict[str, float] = {}
    for bfl, targets in block_linears(model, kinds).items():
        weights = [modules[t.removeprefix("unet.")].weight for t in targets]
        rows, columns = sum(w.shape[0] for w in weights), weights[0].shape[1]
        key = "lora_unet_" + bfl.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, columns, generator=gen) / math.sqrt(columns)).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(rows, rank, generator=gen) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(rank / 2)
        for target, weight in zip(targets, weights):
            flops[target] = 2.0 * weight.shape[0] * weight.shape[1] * rank
    write_safetensors(path, tensors, {"ss_base_model_version": "flux1"})
    return flops


def only_that_loras_layers(model: LoadedModel, folder: Path, rank: int) -> str:
    """A (all blocks) stacked with C (single blocks only), then C's strength changed: the layers rewritten, against
    C's layers and A's."""
    c_layers = write_flux_lora(folder / "flux_c.safetensors", model, rank, seed=3, kinds=("single_blocks.",))
    registry = NetworkRegistry([folder], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    engine.activate([NetworkRequest("flux_a"), NetworkRequest("flux_c")])
    report = engine.activate([NetworkRequest("flux_a"), NetworkRequest("flux_c", 0.5, 0.5)])
    touched = set(report.stats.touched)
    engine.deactivate_all()
    all_layers = sum(len(t) for t in block_linears(model).values())
    same = "exactly C's layers" if touched == set(c_layers) else "NOT only C's layers"
    return (f"A (all {all_layers} block layers) + C (the single blocks' {len(c_layers)}), C's strength 1 -> 0.5: "
            f"{len(touched)} layers rewritten ({same}) in {report.stats.seconds:.3f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny test config: a smoke run in seconds")
    parser.add_argument("--double", type=int, default=19, help="double blocks (Flux.1: 19)")
    parser.add_argument("--single", type=int, default=38, help="single blocks (Flux.1: 38)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights dtype (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="engine sequence repeats; best time per row")
    parser.add_argument("--skip-diffusers", action="store_true",
                        help="no diffusers comparison (always skipped with --quick: diffusers' kohya Flux converter "
                             "splits linear1 at Flux.1's widths only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("diffusers", "transformers", "peft", "lorakit.engine", "lorakit.library.registry", "modules"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    load_start = os.getloadavg()
    compute = torch.float32 if device.type == "cpu" else dtype
    inner = 64 if args.quick else 3072
    machine = Machine(bandwidth=measure_bandwidth(device, GIB // 4 if args.quick else GIB),
                      matmul_rate=measure_matmul(device, compute, inner, args.rank, inner, repeats=10),
                      matmul_square=measure_matmul(device, compute, 1024, 1024, 1024, repeats=2))
    folder = Path(tempfile.mkdtemp(prefix="bench_flux_lora_"))
    try:
        log.info("building the Flux transformer (%s)", "tiny" if args.quick else f"{args.double} double, "
                 f"{args.single} single blocks")
        build_s, model = timed(lambda: build_flux(folder, args.quick, args.double, args.single, device, dtype), device)
        lora_dir = folder / "Lora"
        lora_dir.mkdir()
        flops = write_flux_lora(lora_dir / "flux_a.safetensors", model, args.rank, seed=1)
        write_flux_lora(lora_dir / "flux_b.safetensors", model, args.rank, seed=2)
        rows, facts = engine_rows(model, machine, lora_dir, "flux", flops, device, False, max(args.rounds, 1),
                                  copies=False, kernels=None)
        del facts["engine"]
        free_memory(device)
        incremental = only_that_loras_layers(model, lora_dir, args.rank)
        if not args.skip_diffusers and not args.quick:  # diffusers' kohya converter splits linear1 at Flux.1's widths
            log.info("diffusers comparison")
            times, _ = diffusers_rows(model, machine, lora_dir, device, dtype, 0, algo="flux")
            by_label = {"first apply": times["fuse"], "switch flux_a -> ": times["switch_ab"],
                        "switch flux_b -> ": times["switch_ba"], "strength": times["strength"],
                        "stack": times["stack"], "remove": times["unfuse"], "file load": times["load_a"]}
            for row in rows:
                for prefix, value in by_label.items():
                    if row.operation.startswith(prefix):
                        row.diffusers = value
            rows.append(Row("diffusers load_lora_weights", times["load_a"], notes="kohya Flux converter + PEFT"))
            rows.append(Row("diffusers fuse_lora", times["fuse"]))
        touched_gb = layer_bytes(model, list(flops)) / 1e9
        transformer_gb = param_bytes(model.unet) / 1e9
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    load_end = os.getloadavg()
    shape = "tiny" if args.quick else f"width 3072, {args.double} double + {args.single} single blocks"
    print(f"\nMachine: {cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), torch "
          f"{torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f", dtype {str(dtype).replace('torch.', '')}")
    print(f"Load average (1/5/15 min): start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}")
    print(f"Copy bandwidth {machine.bandwidth / 1e9:.1f} GB/s; addmm ({inner} x {args.rank}) @ ({args.rank} x {inner}) "
          f"{machine.matmul_rate / 1e9:.0f} GFLOP/s")
    print(f"Model: Flux transformer ({shape}) {transformer_gb:.2f} GB, loaded in {build_s:.1f} s; LoRA rank "
          f"{args.rank} over {len(flops)} layers ({touched_gb:.2f} GB of weights, {sum(flops.values()) / 1e9:.1f} GFLOP "
          f"of deltas); peak RSS {rss_bytes('VmHWM') / GIB:.2f} GiB")
    print(f"Incremental: {incremental}")
    print_table(f"Flux ({shape}), kohya LoRA rank {args.rank}, W0 from the checkpoint file", rows, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
