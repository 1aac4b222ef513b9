"""LoRA tools: extract (SVD of a checkpoint difference) reproduces a known LoRA at full rank and reports the error
at lower rank; combine of A and B applied equals applying A and B together."""

from __future__ import annotations

import torch
from safetensors import safe_open

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from lorakit.tools import cli as lora_tools_cli
from lorakit.tools import extract_combine as lora_tools
from lorakit.tools.merge import load_model, merge
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora
from tests.helpers.lycoris_reference import write_lycoris_file
from tests.helpers.model_factory import write_single_file


def test_extract_reproduces_a_known_lora_at_full_rank(tmp_path, capsys):
    base_path = write_single_file(tmp_path / "base.safetensors", "SD1", seed=1)
    base = load_model(base_path)
    deltas = write_kohya_lora(tmp_path / "Lora" / "known.safetensors", base, rank=4, conv=True, seed=3)
    tuned_path = tmp_path / "tuned.safetensors"
    merge(base_path, [tmp_path / "Lora"], "<lora:known:1>", tuned_path)
    out = tmp_path / "extracted" / "extracted.safetensors"
    assert lora_tools_cli.extract_main(["--base", str(base_path), "--tuned", str(tuned_path), "--out", str(out),
                                        "--rank", "4", "--conv"]) == 0
    assert "layers written, relative error max" in capsys.readouterr().out
    registry = NetworkRegistry([out.parent], None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(base)
    pristine = state_snapshot(base)
    report = engine.activate([NetworkRequest("extracted")])
    assert not report.errors and report.stats.layers_touched == len(deltas)
    worst = 0.0
    for name, delta in deltas.items():
        part, path = ("unet", name[5:]) if name.startswith("unet.") else ("text_encoders.0", name.split(".", 2)[2])
        got = base.torch_modules()[part].get_submodule(path).weight - pristine[f"{part}.{path}.weight"]
        worst = max(worst, ((got - delta).norm() / delta.norm()).item())
    assert worst < 1e-4, worst
    engine.deactivate_all()
    low = lora_tools.extract(base, load_model(tuned_path), tmp_path / "low.safetensors", rank=2, conv=True)
    assert 0.05 < low.max_error < 1.0 and low.layers == len(deltas)  # rank 2 of a rank-4 delta: a real, reported error
    auto = lora_tools.extract(base, load_model(tuned_path), tmp_path / "auto.safetensors", energy=0.999999, conv=True)
    with safe_open(str(tmp_path / "auto.safetensors"), "pt") as handle:
        ranks = {handle.get_tensor(k).shape[0] for k in handle.keys() if k.endswith("lora_down.weight")}
    assert ranks <= {1, 2, 3, 4} and auto.max_error < 1e-3


def test_combine_equals_applying_both(tmp_path):
    model = tiny_loaded_model("SD1")
    lora_dir = tmp_path / "Lora"
    write_kohya_lora(lora_dir / "a.safetensors", model, seed=1, only=30, conv=True)
    write_kohya_lora(lora_dir / "b.safetensors", model, seed=2, only=40)
    write_lycoris_file(lora_dir / "c.safetensors", "loha", model.unet, model.text_encoders, seed=4)
    registry = NetworkRegistry([lora_dir, tmp_path / "out"], None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    pristine = state_snapshot(model)
    for label, requests in (("ab", [NetworkRequest("a", 0.5, 0.5), NetworkRequest("b", 1.0, -0.7)]),
                            ("ac", [NetworkRequest("a", 1.0, 1.0), NetworkRequest("c", 0.8, 0.8)])):
        engine.activate(requests)
        together = state_snapshot(model)
        report = lora_tools.combine(engine, requests, tmp_path / "out" / f"{label}.safetensors")
        assert report.layers > 0 and report.max_error == 0.0
        registry.refresh()
        assert engine.activate([NetworkRequest(label)]).stats.layers_touched == report.layers
        combined = state_snapshot(model)
        for key, tensor in together.items():
            assert torch.allclose(combined[key], tensor, rtol=1e-5, atol=1e-6), (label, key)
        engine.deactivate_all()
        assert all(torch.equal(state_snapshot(model)[k], v) for k, v in pristine.items())
    with safe_open(str(tmp_path / "out" / "ab.safetensors"), "pt") as handle:  # plain LoRAs stay low-rank
        assert not any(k.endswith(".diff") for k in handle.keys())
    with safe_open(str(tmp_path / "out" / "ac.safetensors"), "pt") as handle:  # LoHa layers become full diffs
        assert any(k.endswith(".diff") for k in handle.keys())
