"""A LoRA's first apply reads no pristine weight back: the load established that each parameter is its file tensor.

Counted, not timed: `PatchStats.pristine_reads` (full reads of W0: a copy from the file or a full comparison) and
`PristineWeights.views_read` (every view of the file handed out, a 64-value sample included). The first apply of a
layer reads its pristine tensor at most once (the sample) and never in full; a switch reads it once (the copy);
restores stay bitwise, and a layer restored from the file is trusted again without a comparison. A weight written
after the load is caught (by torch's version counter, or by the sample for a write through `.data`) and gets the
full comparison and a copy, as before.
"""

from __future__ import annotations

import torch

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from modules.cache import DiskCache
from tests.helpers.lora_testing import (
    assert_bitwise_equal,
    engine_for,
    load_checkpoint_file,
    state_snapshot,
    weight_of,
    write_kohya_lora,
)
from tests.helpers.model_factory import write_diffusers_folder, write_single_file


def test_first_apply_reads_each_pristine_tensor_at_most_once_and_never_in_full(tmp_path):
    for fmt, path in (("single-file", write_single_file(tmp_path / "model.safetensors", "SDXL", seed=3)),
                      ("diffusers", write_diffusers_folder(tmp_path / "folder", "SD1", seed=4))):
        model = load_checkpoint_file(path, fmt)
        pristine = state_snapshot(model)
        lora_dir = tmp_path / "Lora" / fmt
        deltas = write_kohya_lora(lora_dir / "a.safetensors", model, seed=1, conv=True)
        registry = NetworkRegistry([lora_dir], DiskCache(tmp_path / f"{fmt}.json"))
        registry.refresh()
        engine = LoraEngine(registry)
        engine.set_model(model)
        layers = len(deltas)

        views = model.pristine.views_read
        first = engine.activate([NetworkRequest("a", 0.8, 0.8)]).stats
        assert first.layers_touched == layers
        assert first.pristine_reads == 0, fmt  # no copy, no full comparison
        assert model.pristine.views_read - views <= layers  # one 64-value sample per layer at most
        assert engine.patcher.file_backed_layers == layers  # and still no backup copy

        switch = engine.activate([NetworkRequest("a", 0.3, 0.3)]).stats
        assert switch.pristine_reads == layers  # W0 copied in once per layer
        removal = engine.deactivate_all().stats
        assert removal.pristine_reads == layers
        assert_bitwise_equal(model, pristine)

        again = engine.activate([NetworkRequest("a")]).stats  # restored from the file: trusted again, no comparison
        assert again.pristine_reads == 0, fmt
        engine.deactivate_all()
        assert_bitwise_equal(model, pristine)


def test_a_weight_written_after_the_load_is_compared_in_full_and_kept_as_a_copy(tmp_path):
    model = load_checkpoint_file(write_single_file(tmp_path / "model.safetensors", "SD1", seed=5))
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=2, only=6)
    names = list(deltas)
    with torch.no_grad():
        weight_of(model, names[0]).mul_(1.5)  # through the parameter: torch's version counter moves
        weight_of(model, names[1]).data.add_(0.25)  # through .data: no counter, the sample catches it
    before = state_snapshot(model)
    engine = engine_for(tmp_path, model)
    stats = engine.activate([NetworkRequest("a")]).stats
    assert stats.pristine_reads == 2  # the two changed layers, one full comparison each
    assert engine.patcher.layers[names[0]].weight_backup is not None
    assert engine.patcher.layers[names[1]].weight_backup is not None
    assert engine.patcher.file_backed_layers == len(deltas) - 2
    engine.deactivate_all()
    assert_bitwise_equal(model, before)


def test_float16_file_loaded_as_float32_is_trusted_without_reading(tmp_path):
    """The cast at load is the cast a view goes through, so the identity holds across dtypes."""
    model = load_checkpoint_file(write_single_file(tmp_path / "model.safetensors", "SD1", seed=6, dtype=torch.float16))
    pristine = state_snapshot(model)
    deltas = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", model, seed=3, only=5)
    engine = engine_for(tmp_path, model)
    assert engine.activate([NetworkRequest("a")]).stats.pristine_reads == 0
    assert engine.patcher.file_backed_layers == len(deltas)
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_flux_first_apply_reads_no_pristine_tensor_in_full(tmp_path):
    """The same for Flux: a BFL single file (fused qkv / linear1 split into the model's layers on the way in) and a
    diffusers folder."""
    from modules.sd_model_types import CheckpointInfo  # noqa: PLC0415
    from modules.sd_models import load_checkpoint  # noqa: PLC0415
    from tests.helpers import flux_factory  # noqa: PLC0415
    from tests.lora.engine.test_flux_loras import kohya_file  # noqa: PLC0415

    flux_factory.write_companions(tmp_path, seed=6)
    sources = (("single-file", flux_factory.write_bfl_file(tmp_path / "flux.safetensors", seed=6)),
               ("diffusers", flux_factory.write_diffusers_folder(tmp_path / "flux-folder", seed=6)))
    for fmt, path in sources:
        model = load_checkpoint(CheckpointInfo(path=path, name=path.name, format=fmt), "cpu", torch.float32, tmp_path)
        pristine = state_snapshot(model)
        kohya_file(tmp_path / fmt / "Lora" / "a.safetensors", model, skip=(), text_encoder=True)
        engine = engine_for(tmp_path / fmt, model)
        first = engine.activate([NetworkRequest("a", 0.8, 0.8)]).stats
        assert first.layers_touched > 40
        assert first.pristine_reads == 0, fmt
        assert engine.patcher.file_backed_layers == first.layers_touched
        engine.deactivate_all()
        assert_bitwise_equal(model, pristine)
