"""Restoring LoRA-patched layers from the memory-mapped checkpoint file instead of backup copies.

A model loaded from `.safetensors` (single file or diffusers folder) holds no backup copy of any patched weight: the
patcher reads W0 back from the file. These tests check that the engine still merges exactly and restores bitwise,
for every transform the single-file conversion uses (SDXL: OpenCLIP q/k/v split, text projection transpose), for a
float16 file loaded as float32, when a weight was changed in memory before the LoRA (a copy is then kept), when the
file is replaced by rename while loaded (the old content stays mapped) and when it is rewritten in place (refused,
with a message to reload).
"""

from __future__ import annotations

import os

import pytest
import torch

from lorakit.engine.engine import NetworkRequest
from lorakit.engine.patcher import PristineUnavailableError
from tests.helpers.lora_testing import (
    assert_bitwise_equal,
    engine_for,
    load_checkpoint_file,
    lora_targets,
    state_snapshot,
    weight_of,
    write_kohya_lora,
)
from tests.helpers.model_factory import write_diffusers_folder, write_single_file


def assert_merged(model, pristine: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor], scale: float) -> None:
    for name, delta in deltas.items():
        want = pristine[f"{name}.weight"] + scale * delta
        got = weight_of(model, name)
        assert torch.allclose(got, want, atol=1e-6, rtol=1e-5), f"{name}: max error {(got - want).abs().max()}"


@pytest.mark.parametrize(("family", "fmt", "dtype"), [
    ("SD1", "single-file", None), ("SDXL", "single-file", None), ("SD1", "single-file", torch.float16),
    ("SD1", "diffusers", None),
])
def test_no_backup_copies_exact_merge_and_bitwise_restore(tmp_path, family, fmt, dtype):
    if fmt == "diffusers":
        path = write_diffusers_folder(tmp_path / "model", family, seed=3)
    else:
        path = write_single_file(tmp_path / "model.safetensors", family, seed=3, dtype=dtype)
    model = load_checkpoint_file(path, fmt)
    assert model.pristine is not None and len(model.pristine) > 0
    pristine = state_snapshot(model)
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=1, conv=True)
    engine = engine_for(tmp_path, model)

    report = engine.activate([NetworkRequest("a", 0.8, 0.8)])
    assert report.stats.layers_touched == len(deltas)
    assert engine.patcher.file_backed_layers == len(deltas)  # every layer reads W0 back from the file
    bias_bytes = sum(m.bias.numel() * m.bias.element_size()
                     for m in lora_targets(model, conv=True).values() if m.bias is not None)
    assert engine.patcher.backup_bytes == bias_bytes  # only the (tiny) biases are copied
    assert_merged(model, pristine, deltas, 0.8)

    engine.activate([NetworkRequest("a", -0.5, -0.5)])  # strength change: rebuilt from the file's W0
    assert_merged(model, pristine, deltas, -0.5)
    engine.deactivate_all()
    assert engine.patcher.layers == {}
    assert_bitwise_equal(model, pristine)


def test_bfloat16_weights_are_rebuilt_in_float32_from_the_weight_then_the_file(tmp_path):
    """Weights the patcher cannot rebuild in place (bfloat16 here; fp16/bf16 on CUDA) get a float32 working copy: taken
    from the weight itself on first use, read back from the file afterwards; either way W0 + delta, rounded once."""
    model = load_checkpoint_file(write_single_file(tmp_path / "model.safetensors", "SD1", seed=10, dtype=torch.bfloat16),
                 dtype=torch.bfloat16)
    pristine = state_snapshot(model)
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=7, only=8)
    engine = engine_for(tmp_path, model)
    for scale in (1.0, 0.5):  # first apply, then a strength change
        engine.activate([NetworkRequest("a", scale, scale)])
        assert engine.patcher.file_backed_layers == len(deltas)
        for name, delta in deltas.items():
            want = (pristine[f"{name}.weight"].float() + scale * delta).to(torch.bfloat16).float()
            got = weight_of(model, name).float()
            assert torch.allclose(got, want, rtol=2 ** -7, atol=1e-6), f"{name}: max error {(got - want).abs().max()}"
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_a_weight_changed_in_memory_keeps_a_copy_and_comes_back_exactly(tmp_path):
    model = load_checkpoint_file(write_single_file(tmp_path / "model.safetensors", "SD1", seed=4))
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=2, only=6)
    changed = next(iter(deltas))
    with torch.no_grad():
        weight_of(model, changed).mul_(1.5)  # e.g. another extension edited this layer: the file no longer matches
    before = state_snapshot(model)
    engine = engine_for(tmp_path, model)
    engine.activate([NetworkRequest("a")])
    assert engine.patcher.file_backed_layers == len(deltas) - 1
    assert engine.patcher.layers[changed].weight_backup is not None
    assert_merged(model, before, deltas, 1.0)
    engine.deactivate_all()
    assert_bitwise_equal(model, before)


def test_checkpoint_replaced_by_rename_while_loaded_still_restores_exactly(tmp_path):
    path = write_single_file(tmp_path / "model.safetensors", "SD1", seed=5)
    model = load_checkpoint_file(path)
    pristine = state_snapshot(model)
    write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=3)
    engine = engine_for(tmp_path, model)
    engine.activate([NetworkRequest("a")])
    replacement = write_single_file(tmp_path / "other.safetensors", "SD1", seed=6)
    os.replace(replacement, path)  # what an atomic writer does: the mapped inode keeps the old weights
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_checkpoint_rewritten_in_place_is_refused_with_a_message(tmp_path):
    path = write_single_file(tmp_path / "model.safetensors", "SD1", seed=7)
    model = load_checkpoint_file(path)
    write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=4, only=4)
    engine = engine_for(tmp_path, model)
    engine.activate([NetworkRequest("a")])
    with open(path, "r+b") as handle:  # same inode, new content: the mapping can no longer be trusted
        handle.seek(0, os.SEEK_END)
        handle.write(b"\0" * 16)
    with pytest.raises(PristineUnavailableError, match="changed on disk while loaded.*reload the checkpoint"):
        engine.deactivate_all()


def test_models_without_a_safetensors_file_keep_copies(tmp_path):
    model = load_checkpoint_file(write_single_file(tmp_path / "model.ckpt", "SD1", seed=8))
    assert model.pristine is None
    pristine = state_snapshot(model)
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=5, only=5)
    engine = engine_for(tmp_path, model)
    engine.activate([NetworkRequest("a")])
    assert engine.patcher.file_backed_layers == 0
    assert engine.patcher.backup_bytes >= sum(weight_of(model, n).numel() * 4 for n in deltas)
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_the_merged_path_adds_no_hook_and_changes_no_module(tmp_path):
    """Generation with merged LoRAs runs exactly the no-LoRA forward code: same module objects and types, no hooks,
    no per-instance `forward`, parameters updated in place (the benchmark's step-time rows rest on this)."""
    model = load_checkpoint_file(write_single_file(tmp_path / "model.safetensors", "SD1", seed=9))
    write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=6, conv=True)
    engine = engine_for(tmp_path, model)

    def layout() -> list[tuple]:
        return [(name, id(m), type(m), len(m._forward_hooks) + len(m._forward_pre_hooks), "forward" in m.__dict__,
                 tuple(p.data_ptr() for p in m.parameters(recurse=False)))
                for part in model.torch_modules().values() for name, m in part.named_modules()]

    before = layout()
    engine.activate([NetworkRequest("a")])
    assert engine.patcher.layers  # something was merged
    assert layout() == before
    assert not torch.nn.modules.module._global_forward_hooks and not torch.nn.modules.module._global_forward_pre_hooks
    engine.deactivate_all()
