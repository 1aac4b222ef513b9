"""The "Where it acts" chart is measured at the pristine weights: a file whose delta depends on the weight (IA3, OFT,
GLoRA, DoRA) shows the same chart whatever else is active."""

from __future__ import annotations

import pytest

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.demo_loras import ensure_demo_loras
from lorakit.library.registry import NetworkRegistry
from lorakit.web.block_chart import compute_block_strength
from tests.helpers.lora_testing import tiny_loaded_model

OTHERS = [NetworkRequest("demo_lora", 1.0, 1.0), NetworkRequest("demo_locon", 1.0, 1.0),
          NetworkRequest("demo_full", 1.0, 1.0)]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> LoraEngine:
    folder = tmp_path_factory.mktemp("block-chart") / "Lora"
    ensure_demo_loras(folder)
    registry = NetworkRegistry([folder], None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(tiny_loaded_model("SD1"))
    return engine


@pytest.mark.parametrize("name", ["demo_ia3", "demo_oft", "demo_glora", "demo_dora"])
def test_the_chart_is_the_same_whatever_else_is_active(engine: LoraEngine, name: str) -> None:
    entry = engine.registry.find(name)
    engine.deactivate_all()
    alone = compute_block_strength(engine, engine.network(entry))
    assert alone.peak > 0
    report = engine.activate(OTHERS)  # other LoRAs merged into the same layers
    assert not report.errors and report.stats.layers_touched > 0
    assert compute_block_strength(engine, engine.network(entry)).blocks == alone.blocks
    engine.activate([*OTHERS, NetworkRequest(name, 1.0, 1.0)])  # and itself active too
    assert compute_block_strength(engine, engine.network(entry)).blocks == alone.blocks
    engine.deactivate_all()
