"""The Lora engine end to end on tiny models: key families, exact merged weights, incremental patching, bitwise
restore, and bad files that are reported while the other LoRAs still apply."""

from __future__ import annotations

import json
import random
import struct

import pytest
import torch
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.formats.keys import LayerIndex, split_key
from lorakit.library.registry import NetworkRegistry
from modules.cache import DiskCache
from tests.helpers.lora_testing import (
    assert_bitwise_equal,
    kohya_name,
    lora_targets,
    state_snapshot,
    tiny_loaded_model,
    write_kohya_lora,
)


@pytest.fixture(scope="module")
def sd1():
    return tiny_loaded_model("SD1")


@pytest.fixture(scope="module")
def sdxl():
    return tiny_loaded_model("SDXL")


def make_engine(tmp_path, model):
    registry = NetworkRegistry([tmp_path / "Lora"], DiskCache(tmp_path / "cache.json"))
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    return engine


def assert_merged(model, pristine, expected: dict[str, torch.Tensor], multiplier: float) -> None:
    for name, delta in expected.items():
        part, path = ("unet", name[5:]) if name.startswith("unet.") else (".".join(name.split(".")[:2]), name.split(".", 2)[2])
        module = model.torch_modules()[part].get_submodule(path)
        want = pristine[f"{part}.{path}.weight"] + multiplier * delta
        err = (module.weight - want).norm() / want.norm()
        assert err < 1e-6, f"{name}: relative error {err}"


def test_every_unet_and_te_layer_resolves_under_every_spelling(sd1, sdxl):
    for model in (sd1, sdxl):
        index = LayerIndex(model)
        for name in lora_targets(model, conv=True):
            assert index.resolve(kohya_name(model, name)).name == name
            if name.startswith("unet."):
                assert index.resolve(kohya_name(model, name, sgm=True)).name == name
                ldm = model.ldm_unet_names[name[5:]]
                assert index.resolve("diffusion_model_" + ldm.replace(".", "_")).name == name
                assert index.resolve(name).name == name  # diffusers/PEFT dotted form
            else:
                te = int(name.split(".")[1])
                dotted = ("text_encoder." if te == 0 else "text_encoder_2.") + name.split(".", 2)[2]
                assert index.resolve(dotted).name == name


def test_split_key_families():
    assert split_key("lora_unet_a_b.lora_down.weight") == ("lora_unet_a_b", "lora_down.weight")
    assert split_key("unet.down_blocks.0.attentions.0.proj_in.lora_A.weight") == (
        "unet.down_blocks.0.attentions.0.proj_in", "lora_down.weight")
    assert split_key("unet.mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight") == (
        "unet.mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0", "lora_up.weight")
    assert split_key("text_encoder.text_model.encoder.layers.0.mlp.fc1.alpha") == (
        "text_encoder.text_model.encoder.layers.0.mlp.fc1", "alpha")


@pytest.mark.parametrize("family,sgm", [("SD1", False), ("SDXL", True), ("SDXL", False)])
def test_kohya_lora_merges_exactly_and_restores_bitwise(tmp_path, family, sgm, sd1, sdxl):
    model = sd1 if family == "SD1" else sdxl
    pristine = state_snapshot(model)
    expected = write_kohya_lora(tmp_path / "Lora" / "style.safetensors", model, conv=True, sgm=sgm)
    engine = make_engine(tmp_path, model)
    report = engine.activate([NetworkRequest("style", te_multiplier=0.7, unet_multiplier=0.7)])
    assert not report.errors and not report.warnings
    assert report.stats.layers_touched == len(expected)
    assert_merged(model, pristine, expected, 0.7)
    again = engine.activate([NetworkRequest("style", te_multiplier=0.7, unet_multiplier=0.7)])
    assert again.stats.layers_touched == 0
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)
    assert engine.patcher.backup_bytes == 0


def test_te_and_unet_multipliers_and_stacking(tmp_path, sd1):
    pristine = state_snapshot(sd1)
    a = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", sd1, seed=1)
    b = write_kohya_lora(tmp_path / "Lora" / "b.safetensors", sd1, seed=2, text_encoder=False)
    engine = make_engine(tmp_path, sd1)
    engine.activate([NetworkRequest("a", te_multiplier=0.5, unet_multiplier=1.0), NetworkRequest("b", 1.0, -0.3)])
    combined = {}
    for name, delta in a.items():
        combined[name] = delta * (0.5 if name.startswith("text_encoders") else 1.0)
    for name, delta in b.items():
        combined[name] = combined.get(name, 0) + delta * -0.3
    assert_merged(sd1, pristine, combined, 1.0)
    # the same LoRA twice counts twice
    engine.activate([NetworkRequest("a", 1.0, 1.0), NetworkRequest("a", 1.0, 1.0)])
    assert_merged(sd1, pristine, a, 2.0)
    engine.deactivate_all()
    assert_bitwise_equal(sd1, pristine)


def test_switch_touches_exactly_the_union_of_both_sets(tmp_path, sd1):
    write_kohya_lora(tmp_path / "Lora" / "a.safetensors", sd1, seed=1, only=10)
    b = write_kohya_lora(tmp_path / "Lora" / "b.safetensors", sd1, seed=2, only=25)
    a_layers = set(list(lora_targets(sd1))[:10])
    b_layers = set(b)
    engine = make_engine(tmp_path, sd1)
    engine.activate([NetworkRequest("a")])
    stats = engine.activate([NetworkRequest("b")]).stats
    assert set(stats.touched) == a_layers | b_layers
    assert set(engine.patcher.layers) == b_layers  # no backup for a layer no LoRA touches
    engine.deactivate_all()


def test_random_rounds_leave_weights_bitwise_pristine(tmp_path, sd1):
    pristine = state_snapshot(sd1)
    for i in range(3):
        write_kohya_lora(tmp_path / "Lora" / f"n{i}.safetensors", sd1, seed=10 + i, only=15 + 5 * i, conv=True)
    engine = make_engine(tmp_path, sd1)
    rng = random.Random(0)
    for _ in range(200):
        chosen = rng.sample(range(3), rng.randint(0, 3))
        engine.activate([NetworkRequest(f"n{i}", rng.choice([0.5, 1.0, -1.0]), rng.choice([0.7, 1.0])) for i in chosen])
    engine.deactivate_all()
    assert_bitwise_equal(sd1, pristine)


def test_peft_format_with_adapter_metadata(tmp_path, sd1):
    pristine = state_snapshot(sd1)
    generator = torch.Generator().manual_seed(3)
    targets = list(lora_targets(sd1).items())[:6]
    tensors, expected = {}, {}
    for name, module in targets:
        prefix = name if name.startswith("unet.") else "text_encoder." + name.split(".", 2)[2]
        down = torch.randn(4, module.weight.shape[1], generator=generator)
        up = torch.randn(module.weight.shape[0], 4, generator=generator)
        tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = down, up
        expected[name] = up @ down * (8 / 4)
    (tmp_path / "Lora").mkdir()
    save_file(tensors, str(tmp_path / "Lora" / "peft.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8})})
    engine = make_engine(tmp_path, sd1)
    report = engine.activate([NetworkRequest("peft", 0.7, 0.7)])
    assert not report.errors and not report.warnings
    assert_merged(sd1, pristine, expected, 0.7)
    engine.deactivate_all()


def bad_files(folder, model):
    """Each bad file and the words its error message must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.safetensors"
    write_kohya_lora(good, model, seed=5, only=4)
    raw = good.read_bytes()
    cases = {}
    (folder / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    cases["truncated"] = "out of range"
    (folder / "beyond.safetensors").write_bytes(struct.pack("<Q", 10**6) + raw[8:200])
    cases["beyond"] = "beyond the end of the file"
    (folder / "huge.safetensors").write_bytes(struct.pack("<Q", 10**12) + raw[8:200])
    cases["huge"] = "absurdly large"
    header = b"not json at all!"
    (folder / "nonjson.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    cases["nonjson"] = "not valid JSON"
    name = kohya_name(model, next(iter(lora_targets(model))))
    save_file({f"{name}.lora_down.weight": torch.randn(4, 7), f"{name}.lora_up.weight": torch.randn(9, 4)},
              str(folder / "wrongshape.safetensors"))
    cases["wrongshape"] = "nothing in it fits"
    nan = torch.randn(4, 32)
    nan[0, 0] = float("nan")
    layer = next(iter(lora_targets(model).values()))
    save_file({f"{name}.lora_down.weight": nan, f"{name}.lora_up.weight": torch.randn(layer.weight.shape[0], 4)},
              str(folder / "nans.safetensors"))
    cases["nans"] = "NaN"

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, folder / "pickle.pt")
    cases["pickle"] = "forbidden global"
    write_kohya_lora(folder / "xl.safetensors", tiny_loaded_model("SDXL"), only=4, sgm=True)
    cases["xl"] = "is a LoRA for SDXL, but the loaded model is SD1"
    return cases


def test_bad_files_are_reported_and_others_still_apply(tmp_path, sd1):
    pristine = state_snapshot(sd1)
    cases = bad_files(tmp_path / "Lora", sd1)
    engine = make_engine(tmp_path, sd1)
    for name, words in cases.items():
        report = engine.activate([NetworkRequest(name), NetworkRequest("good", 1.0, 1.0)])
        message = report.errors.get(name, "") or engine.registry.errors.get(str(tmp_path / "Lora" / f"{name}.safetensors"), "")
        if name in ("truncated", "beyond", "huge", "nonjson"):
            assert report.not_found == [name]  # the scan refused it, with the reason kept in registry.errors
        assert words in message, f"{name}: {message!r}"
        assert [a.network.name for a in report.active] == ["good"]
    engine.deactivate_all()
    assert_bitwise_equal(sd1, pristine)


def test_a_delta_that_overflows_is_refused_and_the_layer_keeps_what_it_had(tmp_path, sd1):
    pristine = state_snapshot(sd1)
    write_kohya_lora(tmp_path / "Lora" / "good.safetensors", sd1, seed=8, only=6)
    name = next(iter(lora_targets(sd1)))
    layer = lora_targets(sd1)[name]
    key = kohya_name(sd1, name)
    save_file({f"{key}.lora_down.weight": torch.full((1, layer.weight.shape[1]), 1e20),
               f"{key}.lora_up.weight": torch.full((layer.weight.shape[0], 1), 1e20)},
              str(tmp_path / "Lora" / "huge.safetensors"))  # finite numbers whose product is Inf in float32
    engine = make_engine(tmp_path, sd1)
    engine.activate([NetworkRequest("good")])
    with_good = state_snapshot(sd1)
    report = engine.activate([NetworkRequest("good"), NetworkRequest("huge")])
    assert "NaN or Inf" in report.errors["huge"]
    assert [a.network.name for a in report.active] == ["good"]
    assert_bitwise_equal(sd1, with_good)
    engine.deactivate_all()
    assert_bitwise_equal(sd1, pristine)
