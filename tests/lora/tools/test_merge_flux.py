"""The merge tool on Flux.1: BFL single files (plain, ComfyUI-bundled) and diffusers folders, streamed.

* A split LoRA on fused layers: a PEFT file written by the PEFT library for diffusers' split `to_q`/`to_k`/`to_v`/
  `proj_mlp` lands in BFL's fused `img_attn.qkv` / `linear1` tensors block-diagonally (each split delta in its own
  rows), equal to the BFL weight plus PEFT's own `get_delta_weight` of each split layer, in row order.
* The same for LyCORIS LoKr and LoHa files on the split layers (written by the LyCORIS library): each fused tensor
  is the rows of LyCORIS' own merged split weights.
* Same bytes as a generation: the merged file, loaded back, is bitwise the model the WebUI's engine gives with the same
  tags (kohya BFL names incl. fused `linear1`, text-encoder layers, block weights over Flux's blocks, PEFT split
  layers).
* A transformer-only file: the text-encoder changes cannot be written there, and the tool says so; the rest is merged.
* A Flux diffusers folder (`transformer/`) is streamed and equals the engine's model.
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from lorakit.engine.engine import NetworkRequest
from lorakit.formats.blocks import BlockLayout
from lorakit.prompt.tags import parse_tag
from lorakit.tools import merge as merge_tool
from modules import flux_model
from modules.extra_networks import parse_prompt
from modules.paths import REPO_ROOT
from tests.helpers import flux_factory
from tests.helpers.lora_testing import engine_applied, load_checkpoint_file, state_snapshot
from tests.lora.engine.test_flux_loras import kohya_file, write_simpletuner_lycoris

SPLIT_TARGETS = ["to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "proj_mlp"]


def load(path, models_dir=None, fmt="single-file"):
    return load_checkpoint_file(path, fmt, models_dir=models_dir)


def engine_model(path, lora_dir, requests, models_dir=None, fmt="single-file"):
    return engine_applied(path, lora_dir, requests, fmt, models_dir)


def write_peft_split_lora(folder, model, seed=5):
    """A PEFT LoRA over diffusers' split projections, saved by diffusers' own writer; returns the injected copy
    (PEFT's deltas are the reference)."""
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=SPLIT_TARGETS, init_lora_weights=False)
    injected = inject_adapter_in_model(config, copy.deepcopy(model.unet))
    FluxLoraLoaderMixin.save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(injected),
                                          weight_name="split.safetensors",
                                          transformer_lora_adapter_metadata=config.to_dict())
    return injected


@pytest.fixture
def bundled(tmp_path):
    ckpt = flux_factory.write_bfl_file(tmp_path / "Stable-diffusion" / "flux.safetensors", seed=1, bundled=True)
    flux_factory.write_t5_tokenizer(tmp_path / "text_encoder" / "t5_tokenizer")
    return ckpt


def test_split_lora_lands_block_diagonally_in_fused_bfl_tensors(tmp_path, bundled):
    base = load(bundled, tmp_path)
    lora_dir = tmp_path / "Lora"
    injected = write_peft_split_lora(lora_dir, base)
    out = tmp_path / "merged.safetensors"
    result = merge_tool.merge(bundled, [lora_dir], "<lora:split:0.6>", out, models_dir=tmp_path)
    assert result.streamed and not result.warnings

    deltas = {path: module.get_delta_weight("default") for path, module in injected.named_modules()
              if isinstance(module, BaseTunerLayer)}
    prefix = flux_model.COMFY_PREFIX
    checked = 0
    with safe_open(str(out), "pt") as merged, safe_open(str(bundled), "pt") as source:
        for bfl, members in fused_members(base).items():
            want = source.get_tensor(f"{prefix}{bfl}.weight").clone()
            for start, stop, path in members:
                if path in deltas:
                    want[start:stop] += 0.6 * deltas[path]
            got = merged.get_tensor(f"{prefix}{bfl}.weight")
            assert not torch.equal(got, source.get_tensor(f"{prefix}{bfl}.weight")), bfl
            assert (got - want).abs().max().item() < 1e-6, bfl
            checked += 1
        untouched = f"{prefix}double_blocks.0.img_attn.proj.weight"
        assert torch.equal(merged.get_tensor(untouched), source.get_tensor(untouched))
    assert checked == 2 * 2 + 2  # img_attn.qkv + txt_attn.qkv per double block, linear1 per single block


def fused_members(model):
    """{BFL fused module: [(start, stop, diffusers path), ...]} of the model's config."""
    fused: dict[str, list[tuple[int, int, str]]] = {}
    for path, target in flux_model.bfl_module_map(model.unet.config).items():
        if isinstance(target, tuple):
            fused.setdefault(target[0], []).append((target[1], target[2], path))
    return fused


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_split_lycoris_lands_in_fused_bfl_tensors(tmp_path, bundled, algo):
    base = load(bundled, tmp_path)
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    _, reference = write_simpletuner_lycoris(lora_dir / f"st-{algo}.safetensors", base, algo, seed=9)
    out = tmp_path / "merged.safetensors"
    result = merge_tool.merge(bundled, [lora_dir], f"<lora:st-{algo}:0.7>", out, models_dir=tmp_path)
    assert result.streamed and not result.warnings
    prefix = flux_model.COMFY_PREFIX
    with safe_open(str(out), "pt") as merged, safe_open(str(bundled), "pt") as source:
        for bfl, members in fused_members(base).items():
            want = source.get_tensor(f"{prefix}{bfl}.weight").clone()
            for start, stop, path in members:
                want[start:stop] = reference[f"unet.{path}"](0.7).weight
            got = merged.get_tensor(f"{prefix}{bfl}.weight")
            assert not torch.equal(got, source.get_tensor(f"{prefix}{bfl}.weight")), bfl
            assert (got - want).abs().max().item() < 1e-5, bfl


def test_merged_bfl_file_is_bitwise_the_engines_model(tmp_path, bundled):
    base = load(bundled, tmp_path)
    lora_dir = tmp_path / "Lora"
    kohya_file(lora_dir / "k.safetensors", base, skip=(), text_encoder=True)  # incl. fused linear1, CLIP-L layers
    write_peft_split_lora(lora_dir, base)
    del base
    out = tmp_path / "merged.safetensors"
    prompt = "<lora:k:0.8:lbw=1,0.5,0,1,0.25,0.75,1,0.5> <lora:split:0.5>"  # block weights: CLIP T5 IN D0 D1 S0 S1 OUT
    result = merge_tool.merge(bundled, [lora_dir], prompt, out, models_dir=tmp_path)
    assert result.streamed and result.layers_merged > 0 and not result.warnings
    layout = BlockLayout.of_model(load(bundled, tmp_path))
    _, tags = parse_prompt(prompt)
    requests = [parse_tag(params).request(layout) for params in tags["lora"]]
    want = state_snapshot(engine_model(bundled, lora_dir, requests, tmp_path))
    got = state_snapshot(load(out, tmp_path))
    assert want.keys() == got.keys()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    pristine = state_snapshot(load(bundled, tmp_path))
    changed = {k.split(".")[0] for k in want if not torch.equal(want[k], pristine[k])}
    assert changed == {"unet", "text_encoders"}


def test_transformer_only_file_merges_the_transformer_and_names_what_it_cannot_write(tmp_path):
    ckpt = flux_factory.write_bfl_file(tmp_path / "Stable-diffusion" / "flux1-dev.safetensors", seed=1)
    flux_factory.write_companions(tmp_path, seed=1)
    base = load(ckpt, tmp_path)
    lora_dir = tmp_path / "Lora"
    kohya_file(lora_dir / "k.safetensors", base, skip=(), text_encoder=True)
    del base
    out = tmp_path / "merged.safetensors"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), "merge", "--ckpt", str(ckpt), "--lora-dir",
                           str(lora_dir), "--prompt", "<lora:k:1>", "--out", str(out)],  # models/ found by default
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "streamed" in done.stdout
    assert ("warning: flux1-dev.safetensors does not hold text encoder 1 (12 layers the LoRAs change): those changes "
            "are not written") in done.stderr
    want = state_snapshot(engine_model(ckpt, lora_dir, [NetworkRequest("k")], tmp_path))
    got = state_snapshot(load(out, tmp_path))
    unet = [k for k in want if k.startswith("unet.")]
    assert [k for k in unet if not torch.equal(want[k], got[k])] == []
    pristine = state_snapshot(load(ckpt, tmp_path))
    assert all(torch.equal(got[k], pristine[k]) for k in got if k.startswith("text_encoders."))
    assert any(not torch.equal(got[k], pristine[k]) for k in unet)


def test_flux_diffusers_folder_streams_and_equals_the_engine(tmp_path):
    folder = flux_factory.write_diffusers_folder(tmp_path / "flux-folder", seed=2)
    base = load(folder, fmt="diffusers")
    lora_dir = tmp_path / "Lora"
    kohya_file(lora_dir / "k.safetensors", base, skip=(), text_encoder=True)
    del base
    out = tmp_path / "merged"
    result = merge_tool.merge(folder, [lora_dir], "<lora:k:0.7>", out)
    assert result.streamed and not result.warnings
    want = engine_model(folder, lora_dir, [NetworkRequest("k", 0.7, 0.7)], fmt="diffusers")
    got = load(out, fmt="diffusers")
    for part in ("unet", "text_encoders.0", "text_encoders.1", "vae"):
        a, b = want.torch_modules()[part].state_dict(), got.torch_modules()[part].state_dict()
        assert a.keys() == b.keys()
        assert [k for k in a if not torch.equal(a[k], b[k])] == [], part
