"""The merge tool streams the checkpoint: tensor by tensor, never the whole model in memory, same bytes as the engine.

* Same result: a streamed merge of an SDXL single file (OpenCLIP q/k/v split and text projection transpose on the way
  in and out) and of a diffusers folder equals, bitwise, what the whole-model path gives (the WebUI's engine applied to
  the loaded model, written back through `diffusers_to_ldm`), including a full-weight LoRA that changes biases.
* Streams: the peak resident memory the tool prints grows by a few tensors, not by the checkpoint's size, when the
  checkpoint gains 640 MB of extra tensors (EMA-like copies the merge passes through).
"""

from __future__ import annotations

import re
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lorakit.engine.engine import NetworkRequest
from lorakit.tools import merge as merge_tool
from modules.checkpoint_convert import diffusers_to_ldm
from modules.paths import REPO_ROOT
from modules.safetensors_header import write_safetensors
from tests.helpers.lora_testing import engine_applied, kohya_name, load_checkpoint_file, lora_targets, write_kohya_lora
from tests.helpers.model_factory import write_diffusers_folder, write_single_file


def load(path, fmt="single-file"):
    return load_checkpoint_file(path, fmt)


def write_full_lora_with_biases(path, model, count=3):
    """A LyCORIS 'full' LoRA (diff + diff_b) on the first attention layers of the UNet: deltas that change biases.
    Returns the layers' target names."""
    tensors = {}
    layers = []
    gen = torch.Generator().manual_seed(11)
    for name, module in list(lora_targets(model, text_encoder=False).items())[:count]:
        if module.bias is None:
            continue
        key = kohya_name(model, name, sgm=model.is_sdxl)
        tensors[f"{key}.diff"] = torch.randn(module.weight.shape, generator=gen) * 0.05
        tensors[f"{key}.diff_b"] = torch.randn(module.bias.shape, generator=gen) * 0.05
        layers.append(name)
    assert tensors
    save_file(tensors, str(path))
    return layers


def test_streamed_single_file_equals_the_whole_model_merge_bitwise(tmp_path):
    ckpt = write_single_file(tmp_path / "xl.safetensors", "SDXL", seed=2, dtype=torch.float16)
    base = load(ckpt)
    lora_dir = tmp_path / "Lora"
    write_kohya_lora(lora_dir / "a.safetensors", base, seed=4, sgm=True)  # UNet + both text encoders (q/k/v)
    bias_layers = write_full_lora_with_biases(lora_dir / "full.safetensors", base, count=8)
    del base
    out = tmp_path / "merged.safetensors"
    result = merge_tool.merge(ckpt, [lora_dir], "<lora:a:0.7> <lora:full:0.5>", out)
    assert result.streamed and result.layers_merged > 0

    model = engine_applied(ckpt, lora_dir, [NetworkRequest("a", 0.7, 0.7), NetworkRequest("full", 0.5, 0.5)])
    want = diffusers_to_ldm(model.torch_modules(), model.key_map, model.key_map_special)
    with safe_open(str(out), "pt") as merged, safe_open(str(ckpt), "pt") as source:
        assert sorted(merged.keys()) == sorted(source.keys()) == sorted(want)
        changed = set()
        for key in merged.keys():
            got = merged.get_tensor(key)
            assert got.dtype == source.get_tensor(key).dtype, key
            assert torch.equal(got, want[key]), key
            if not torch.equal(got, source.get_tensor(key)):
                changed.add(key)
    biases = {model.key_map[f"{layer}.bias"] for layer in bias_layers}
    assert biases and biases <= changed  # the full LoRA's bias deltas were written
    assert any(k.endswith("in_proj_weight") for k in changed)  # the q/k/v split path was exercised


def test_streamed_diffusers_folder_equals_the_whole_model_merge_bitwise(tmp_path):
    folder = write_diffusers_folder(tmp_path / "model", "SD1", seed=3)
    base = load(folder, "diffusers")
    lora_dir = tmp_path / "Lora"
    write_kohya_lora(lora_dir / "a.safetensors", base, seed=5, conv=True)
    del base
    out = tmp_path / "merged"
    result = merge_tool.merge(folder, [lora_dir], "<lora:a:1>", out)
    assert result.streamed
    model = engine_applied(folder, lora_dir, [NetworkRequest("a")], "diffusers")
    merged = load(out, "diffusers")
    for part in ("unet", "text_encoders.0", "vae"):
        want = model.torch_modules()[part].state_dict()
        got = merged.torch_modules()[part].state_dict()
        assert want.keys() == got.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), part


def peak_of(stdout: str) -> float:
    match = re.search(r"peak resident memory ([\d.]+) GiB", stdout)
    assert match, stdout
    return float(match.group(1))


def test_the_merge_holds_a_few_tensors_not_the_checkpoint(tmp_path):
    """Peak resident memory (printed by the tool) with 10 extra 64 MiB tensors in the checkpoint stays within three
    such tensors of the peak without them: the tensors pass through one at a time."""
    small = write_single_file(tmp_path / "small.safetensors", "SD1", seed=6)
    with safe_open(str(small), "pt") as handle:
        state = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = handle.metadata()
    chunk = 64 << 20
    for index in range(10):
        state[f"model_ema.extra_{index}"] = torch.full((chunk // 4,), float(index))
    big = write_safetensors(tmp_path / "big.safetensors", state, metadata)
    del state
    base = load(small)
    write_kohya_lora(tmp_path / "Lora" / "a.safetensors", base, seed=7, conv=True)
    del base

    def run(ckpt, out):
        done = subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), "merge", "--ckpt", str(ckpt),
                               "--lora-dir", str(tmp_path / "Lora"), "--prompt", "<lora:a:1>", "--out", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "streamed" in done.stdout
        return peak_of(done.stdout)

    peak_small = run(small, tmp_path / "out_small.safetensors")
    peak_big = run(big, tmp_path / "out_big.safetensors")
    extra_gib = 10 * chunk / (1 << 30)
    assert peak_big - peak_small < 3 * chunk / (1 << 30), (peak_small, peak_big, extra_gib)
    with safe_open(str(tmp_path / "out_big.safetensors"), "pt") as handle:
        assert torch.equal(handle.get_tensor("model_ema.extra_9"), torch.full((chunk // 4,), 9.0))
