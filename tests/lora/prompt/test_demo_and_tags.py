"""Demo LoRAs (one per algorithm) load and apply cleanly; tag parsing, comments and `Lora hashes` infotext."""

from __future__ import annotations

import pytest
import torch

from lorakit.library.demo_loras import DEMOS, ensure_demo_loras
from lorakit.prompt import infotext, tags
from modules.extra_networks import parse_prompt
from tests.helpers.handlers import P, make_handler
from tests.helpers.lora_testing import assert_bitwise_equal, state_snapshot, tiny_loaded_model, write_kohya_lora


@pytest.fixture(scope="module")
def sd1():
    return tiny_loaded_model("SD1")


def activate(networks, model, prompt, is_hr_pass=False):
    p = P(model, is_hr_pass)
    _, data = parse_prompt(prompt)
    networks.activate(p, data)
    return p


def test_every_demo_lora_applies_without_warnings(tmp_path, sd1):
    written = ensure_demo_loras(tmp_path / "Lora")
    assert len(written) == len(DEMOS) and ensure_demo_loras(tmp_path / "Lora") == []
    pristine = state_snapshot(sd1)
    networks, engine = make_handler(tmp_path, sd1)
    algorithms = {e.name: e.algorithm for e in engine.registry.entries()}
    assert algorithms["demo_loha"] == "LoHa" and algorithms["demo_lokr"] == "LoKr" and algorithms["demo_dora"] == "LoRA+DoRA"
    for name, *_ in DEMOS:
        p = activate(networks, sd1, f"<lora:{name}:0.8>")
        assert p.comments == [], (name, p.comments)
        assert engine.last_report.stats.layers_touched > 0, name
        assert p.extra_generation_params["Lora hashes"].startswith(f"{name}: ")
    activate(networks, sd1, "no loras")
    assert_bitwise_equal(sd1, pristine)
    entry = engine.registry.find("demo-lora")  # alias from ss_output_name
    assert entry is not None and entry.name == "demo_lora" and entry.sd_version == "SD1"
    assert entry.user_metadata["activation text"] == "sunset style" and entry.preview_path().name == "demo_lora.png"


def test_malformed_tags_are_named_and_others_still_apply(tmp_path, sd1):
    write_kohya_lora(tmp_path / "Lora" / "good.safetensors", sd1, only=5)
    networks, engine = make_handler(tmp_path, sd1)
    p = activate(networks, sd1, "<lora:good:0.5> <lora:x:abc> <lora:good2:> <lora:y:nan> <lora::1> <lora:z:1:lbx=2> "
                                "<lora:missing1> <lyco:missing2:0.3>")
    assert [a.network.name for a in engine.active] == ["good"]
    assert "<lora:x:abc>: weight 'abc' is not a number" in p.comments
    assert "<lora:good2:>: weight '' is not a number" in p.comments
    assert "<lora:y:nan>: weight 'nan' is not a finite number" in p.comments
    assert "<lora::1>: the LoRA name is missing" in p.comments
    assert "<lora:z:1:lbx=2>: unknown argument lbx" in p.comments
    assert "Lora not found: missing1, missing2" in p.comments
    assert p.extra_generation_params["Lora hashes"] == f"good: {engine.active[0].network.on_disk.shorthash}"


def test_positional_named_dyn_and_hr_weights(tmp_path, sd1):
    pristine = state_snapshot(sd1)
    expected = write_kohya_lora(tmp_path / "Lora" / "a.safetensors", sd1, rank=4, only=8)
    networks, engine = make_handler(tmp_path, sd1)
    parse = tags.parse_request
    params = lambda text: parse_prompt(text)[1]["lora"][0]  # noqa: E731
    r = parse(params("<lora:a:0.6:0.2:2>"))
    assert (r.te_multiplier, r.unet_multiplier, r.dyn_dim) == (0.6, 0.2, 2)
    r = parse(params("<lora:a:te=0.5>"))
    assert (r.te_multiplier, r.unet_multiplier) == (0.5, 0.5)
    r = parse(params("<lora:a:1:unet=0:hr=0.25>"), is_hr_pass=True)
    assert (r.te_multiplier, r.unet_multiplier) == (0.25, 0.25)
    activate(networks, sd1, "<lora:a:1:hr=0.25>", is_hr_pass=True)
    name, delta = next(iter(expected.items()))
    module = sd1.unet.get_submodule(name[5:])
    want = pristine[f"unet.{name[5:]}.weight"] + 0.25 * delta
    assert torch.allclose(module.weight, want, rtol=1e-5, atol=1e-6)
    activate(networks, sd1, "")
    assert_bitwise_equal(sd1, pristine)


def test_pasted_infotext_names_are_rewritten_by_hash(tmp_path, sd1):
    write_kohya_lora(tmp_path / "Lora" / "local_name.safetensors", sd1, only=3)
    networks, engine = make_handler(tmp_path, sd1)
    p = activate(networks, sd1, "<lora:local_name:1>")
    shorthash = engine.active[0].network.on_disk.shorthash
    prompt = "a <lora:their_name:0.7> b <lora:other:1> <lora:their_name>"
    rewritten = infotext.rewrite_names_by_hash(
        prompt, f"their_name: {shorthash}, other: 000000000000", engine.registry.find_by_short_hash, lambda e: e.name)
    assert rewritten == "a <lora:local_name:0.7> b <lora:other:1> <lora:their_name>"
    assert p.extra_generation_params["Lora hashes"] == f"local_name: {shorthash}"
