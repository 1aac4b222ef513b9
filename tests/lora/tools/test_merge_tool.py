"""The merge tool from the command line: single file in -> same keys/dtypes out, diffusers folder in -> folder out,
clear non-zero exits on bad input; and a 4-channel LoRA on a 9-channel inpainting conv_in is zero-padded."""

from __future__ import annotations

import subprocess
import sys

import torch
from safetensors import safe_open

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from lorakit.tools import merge as merge_tool
from modules.paths import REPO_ROOT
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import load_checkpoint
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora
from tests.helpers.model_factory import write_diffusers_folder, write_single_file


def run_merge(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "launch.py"), "merge", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_single_file_merge_keeps_keys_and_dtypes(tmp_path):
    ckpt = write_single_file(tmp_path / "model.safetensors", "SD1", seed=2, dtype=torch.float16)
    model = load_checkpoint(CheckpointInfo(path=ckpt, name="m", format="single-file"), "cpu", torch.float32)
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, only=6, seed=4)
    out = tmp_path / "merged.safetensors"
    result = run_merge("--ckpt", ckpt, "--lora-dir", tmp_path / "Lora", "--prompt", "<lora:a:0.5>", "--out", out)
    assert result.returncode == 0, result.stderr
    with safe_open(str(ckpt), "pt") as before, safe_open(str(out), "pt") as after:
        assert list(before.keys()) == list(after.keys())
        for key in before.keys():
            assert before.get_tensor(key).dtype == after.get_tensor(key).dtype
    merged = load_checkpoint(CheckpointInfo(path=out, name="o", format="single-file"), "cpu", torch.float32)
    name, delta = next(iter(deltas.items()))
    path = name[len("unet."):]
    want = (model.unet.get_submodule(path).weight + 0.5 * delta).half().float()
    assert torch.equal(merged.unet.get_submodule(path).weight, want)
    untouched = "conv_in"
    assert torch.equal(merged.unet.get_submodule(untouched).weight, model.unet.get_submodule(untouched).weight)


def test_diffusers_folder_merge_writes_a_folder(tmp_path):
    folder = write_diffusers_folder(tmp_path / "model", "SDXL", seed=3)
    model = load_checkpoint(CheckpointInfo(path=folder, name="m", format="diffusers"), "cpu", torch.float32)
    deltas = write_kohya_lora(tmp_path / "Lora" / "xl.safetensors", model, only=5, seed=5, sgm=True)
    out = tmp_path / "merged"
    status = merge_tool.main(["--ckpt", str(folder), "--lora-dir", str(tmp_path / "Lora"), "--prompt", "<lora:xl:1>",
                              "--out", str(out)])
    assert status == 0
    assert (out / "vae" / "config.json").is_file() and (out / "scheduler" / "scheduler_config.json").is_file()
    merged = load_checkpoint(CheckpointInfo(path=out, name="o", format="diffusers"), "cpu", torch.float32)
    for name, delta in deltas.items():
        got = merged.unet.get_submodule(name[5:]).weight
        want = model.unet.get_submodule(name[5:]).weight + delta
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), name


def test_merge_errors_exit_non_zero_with_a_message(tmp_path, capsys):
    ckpt = write_single_file(tmp_path / "model.safetensors", "SD1")
    (tmp_path / "Lora").mkdir()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    cases = [
        (ckpt, ["--prompt", "<lora:nope:1>"], 1, "Lora not found: nope"),
        (ckpt, ["--prompt", "<lora:x:abc>"], 2, "weight 'abc' is not a number"),
        (ckpt, ["--prompt", "no tags"], 2, "no <lora:...> tag"),
        (tmp_path / "missing.safetensors", ["--prompt", "<lora:a>"], 2, "checkpoint not found"),
        (broken, ["--prompt", "<lora:a>"], 1, "broken.safetensors"),
    ]
    for source, extra, code, words in cases:
        status = merge_tool.main(["--ckpt", str(source), "--lora-dir", str(tmp_path / "Lora"),
                                  "--out", str(tmp_path / "o.safetensors"), *extra])
        err = capsys.readouterr().err
        assert status == code and words in err, (extra, status, err)
    assert not (tmp_path / "o.safetensors").exists()


def test_four_channel_lora_is_zero_padded_on_inpainting_conv_in(tmp_path):
    plain = tiny_loaded_model("SD1")
    inpaint = tiny_loaded_model("SD1", inpainting=True)
    conv = plain.unet.conv_in
    generator = torch.Generator().manual_seed(0)
    down = torch.randn(4, 4, 3, 3, generator=generator)
    up = torch.randn(conv.weight.shape[0], 4, 1, 1, generator=generator)
    from safetensors.torch import save_file  # noqa: PLC0415 - imported where it is needed

    (tmp_path / "Lora").mkdir()
    save_file({"lora_unet_conv_in.lora_down.weight": down, "lora_unet_conv_in.lora_up.weight": up,
               "lora_unet_conv_in.alpha": torch.tensor(4.0)}, str(tmp_path / "Lora" / "c.safetensors"))
    registry = NetworkRegistry([tmp_path / "Lora"], None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(inpaint)
    before = state_snapshot(inpaint)["unet.conv_in.weight"]
    report = engine.activate([NetworkRequest("c")])
    assert not report.errors and not report.warnings
    delta = (up.flatten(1) @ down.flatten(1)).reshape(conv.weight.shape[0], 4, 3, 3)
    after = inpaint.unet.conv_in.weight
    assert torch.allclose(after[:, :4], before[:, :4] + delta, rtol=1e-5, atol=1e-6)
    assert torch.equal(after[:, 4:], before[:, 4:])
