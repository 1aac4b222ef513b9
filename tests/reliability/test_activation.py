"""`activate` contains failures per requested LoRA: the others apply, the failed one is named, and the model is always
pristine plus exactly the LoRAs that loaded, never the previous prompt's set.

Cases of the outside attack: an FP8 LoRA (upcast exactly, so it applies as its float32 twin does), a malformed
`lora_adapter_metadata` (`lora_alpha` text, NaN, an `alpha_pattern` list), an unforeseen exception inside the loader
for one file (a bug: logged with its traceback, reported with its type), a rescan that fails during the activation,
and a LoRA added after a failed rescan. Each time the prompt before had other LoRAs merged. A failure record keeps no
tensors (the "nothing fits" record a file leaves behind holds only names).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.engine import engine as engine_module
from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from tests.helpers.corpus import sum_deltas, weights_problems
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger


def engine_for(folder: Path, model: object) -> LoraEngine:
    registry = NetworkRegistry([folder], cache=None, hashing=True)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    return engine


@pytest.fixture
def setup(tmp_path: Path) -> tuple[object, dict, Path, dict, dict]:
    model = tiny_loaded_model("SD1", seed=3)
    folder = tmp_path / "Lora"
    previous = write_kohya_lora(folder / "previous.safetensors", model, seed=1, only=10)
    good = write_kohya_lora(folder / "good.safetensors", model, seed=2, only=8)
    return model, state_snapshot(model), folder, previous, good


def test_an_fp8_lora_applies_exactly_as_its_float32_twin(setup: tuple, ledger: Ledger) -> None:
    model, pristine, folder, _, _ = setup
    write_kohya_lora(folder / "src.safetensors", model, seed=5, only=6)
    tensors = load_file(folder / "src.safetensors")
    fp8 = {k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}
    save_file(fp8, folder / "eight.safetensors")
    save_file({k: v.to(torch.float32) for k, v in fp8.items()}, folder / "twin.safetensors")
    engine = engine_for(folder, model)
    report = engine.activate([NetworkRequest("eight")])
    ledger.bad_input()
    assert report.errors == {} and [a.network.name for a in report.active] == ["eight"]
    merged = {k: v.clone() for k, v in state_snapshot(model).items()}
    engine.activate([NetworkRequest("twin")])
    ledger.intact(all(torch.equal(merged[k], v) for k, v in state_snapshot(model).items()),
                  "an FP8 LoRA merges bitwise as its float32 twin")
    engine.deactivate_all()
    ledger.intact(not weights_problems(model, pristine, {}), "pristine after the FP8 LoRA")


@pytest.mark.parametrize("adapter", ['{"lora_alpha": "abc"}', '{"lora_alpha": NaN}', '{"alpha_pattern": [1, 2]}',
                                     '{"lora_alpha": 1e999}'])
def test_a_malformed_adapter_metadata_fails_alone(setup: tuple, adapter: str, ledger: Ledger) -> None:
    model, pristine, folder, previous, good = setup
    odd = write_kohya_lora(folder / "odd.safetensors", model, seed=6, only=4,
                           metadata={"lora_adapter_metadata": adapter})
    engine = engine_for(folder, model)
    engine.activate([NetworkRequest("previous")])
    report = engine.activate([NetworkRequest("odd"), NetworkRequest("good")])
    ledger.bad_input()
    if "NaN" in adapter or "1e999" in adapter:
        # not JSON: the field stays text, which is no adapter metadata (ignored), so the file applies as kohya
        assert report.errors == {}
        expected = sum_deltas((odd, 1.0), (good, 1.0))
    else:
        assert "lora_adapter_metadata" in report.errors["odd"], report.errors
        expected = good
    assert [a.network.name for a in report.active][-1] == "good"
    wrong = weights_problems(model, pristine, expected)
    ledger.intact(not wrong, f"{adapter}: pristine + exactly the LoRAs that loaded: {wrong[:3]}")


def test_an_unforeseen_exception_for_one_file_is_named_and_the_others_apply(
        setup: tuple, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    model, pristine, folder, previous, good = setup
    write_kohya_lora(folder / "victim.safetensors", model, seed=7, only=4)
    engine = engine_for(folder, model)
    engine.activate([NetworkRequest("previous")])
    real = engine_module.load_network

    def faulty(entry: object, index: object, *args: object) -> object:
        if getattr(entry, "name", "") == "victim":
            raise KeyError("injected bug")
        return real(entry, index, *args)

    monkeypatch.setattr(engine_module, "load_network", faulty)
    ledger.fault()
    with caplog.at_level(logging.ERROR):
        report = engine.activate([NetworkRequest("victim"), NetworkRequest("good")])
    assert "KeyError" in report.errors["victim"] and "injected bug" in report.errors["victim"]
    assert any("Traceback" in (r.exc_text or "") for r in caplog.records if "victim" in r.getMessage())
    wrong = weights_problems(model, pristine, good)
    ledger.intact(not wrong, f"after a bug for one file: pristine + the good LoRA (not the previous set): {wrong[:3]}")


def test_a_failed_rescan_costs_only_the_names_it_would_have_found(
        setup: tuple, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    model, pristine, folder, previous, good = setup
    engine = engine_for(folder, model)
    engine.activate([NetworkRequest("previous")])
    late = write_kohya_lora(folder / "late.safetensors", model, seed=8, only=5)  # added after the last scan
    real_refresh = engine.registry.refresh

    def failing() -> None:
        raise RuntimeError("injected rescan failure")

    monkeypatch.setattr(engine.registry, "refresh", failing)
    ledger.fault()
    report = engine.activate([NetworkRequest("late"), NetworkRequest("good")])
    assert report.not_found == ["late"] and any("could not be rescanned" in w for w in report.warnings)
    wrong = weights_problems(model, pristine, good)
    ledger.intact(not wrong, f"after a failed rescan: pristine + the good LoRA: {wrong[:3]}")
    monkeypatch.setattr(engine.registry, "refresh", real_refresh)
    report = engine.activate([NetworkRequest("late"), NetworkRequest("good")])  # usable once a rescan works
    assert report.errors == {} and report.not_found == []
    wrong = weights_problems(model, pristine, sum_deltas((late, 1.0), (good, 1.0)))
    ledger.intact(not wrong, f"the LoRA added after a failed rescan applies: {wrong[:3]}")


def test_a_failure_record_holds_no_tensors(tmp_path: Path, ledger: Ledger) -> None:
    model = tiny_loaded_model("SD1", seed=3)
    folder = tmp_path / "Lora"
    folder.mkdir()
    tensors = {f"lora_unet_nowhere_{i}.lora_down.weight": torch.randn(4, 64) for i in range(4)}
    tensors |= {f"lora_unet_nowhere_{i}.lora_up.weight": torch.randn(64, 4) for i in range(4)}
    tensors["bundle_emb.tok.string_to_param.*"] = torch.randn(2, 32)
    save_file(tensors, folder / "nowhere.safetensors")
    engine = engine_for(folder, model)
    for _ in range(3):
        report = engine.activate([NetworkRequest("nowhere")])
        assert "nothing in it fits" in report.errors["nowhere"]
    ledger.bad_input()
    gc.collect()
    (record,) = engine._nothing_fits.values()
    assert record.__traceback__ is None and record.network.bundle_embeddings == {} and not record.network.modules
    assert record.network.unmatched_keys  # the names stay, for the message


def test_many_tags_over_few_files_load_each_file_once(tmp_path: Path, ledger: Ledger) -> None:
    """500 tags over 10 LoRAs (more files than the engine's memory limit of 8): each file is loaded once and every
    tag shares its network, so memory does not grow per tag (it held 500 copies: +590 MB in the attack; see
    bench/bench_hostile_memory.py for the RSS numbers)."""
    model = tiny_loaded_model("SD1", seed=3)
    pristine = state_snapshot(model)
    folder = tmp_path / "Lora"
    deltas = [write_kohya_lora(folder / f"l{i}.safetensors", model, seed=i, rank=2, only=3) for i in range(10)]
    engine = engine_for(folder, model)
    requests = [NetworkRequest(f"l{i % 10}", 0.01, 0.01) for i in range(500)]
    for _ in range(2):
        report = engine.activate(requests)
        assert report.errors == {} and len(report.active) == 500
        assert len({id(a.network) for a in report.active}) == 10
    ledger.bad_input()
    wrong = weights_problems(model, pristine, sum_deltas(*((d, 0.5) for d in deltas)), rtol=1e-4, atol=1e-5)
    ledger.intact(not wrong, f"500 tags over 10 LoRAs: {wrong[:3]}")
    engine.deactivate_all()
    ledger.intact(not weights_problems(model, pristine, {}), "pristine after 500 tags")
