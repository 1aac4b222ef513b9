"""Property tests: random sequences of activations keep the weights exactly pristine + the requested deltas.

Four LoRA files with known deltas are written once for the module (a kohya LoRA on text encoder and UNet, a LoCon
with 3x3 convs, a LoHa, and a second, wider kohya LoRA with another rank and alpha). Hypothesis draws sequences of
prompts, each a random subset of them (the same file twice stacks), as real `<lora:...>` tags: weights (zero and
negative included) positional or as `te=`/`unet=`, keyframe schedules and `start=`/`stop=` gates evaluated at a
random step of a random pass length, and block weights (`lbw=` 17/26-value vectors or presets, `in=`/`mid=`/`out=`).
Each tag goes through `parse_prompt`, `lorakit.prompt.tags.parse_tag` and `LoraTag.request` (so block weights reach the
engine as `NetworkRequest.layer_factor`) into one `LoraEngine.activate`.

The expected multiplier of every layer is worked out here independently (the documented interpolation and gate
rules, the lora-block-weight slot orders, the layer's block from its LDM name); after each activation every touched
weight equals pristine + Σ multiplier x delta, every other tensor is bitwise pristine; after `deactivate_all` the
whole model is bitwise pristine. Quick form: 25 sequences; full form: 300.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine
from lorakit.formats.blocks import BlockLayout
from lorakit.library.registry import NetworkRegistry
from lorakit.prompt.tags import parse_tag
from modules.cache import DiskCache
from modules.extra_networks import parse_prompt
from modules.sd_model_types import LoadedModel
from tests.helpers.corpus import weights_problems
from tests.helpers.lora_testing import kohya_name, lora_targets, state_snapshot, tiny_loaded_model, write_kohya_lora

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

FULL_FORM = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")  # the ledger's `full`, needed at import
EXAMPLES = 300 if FULL_FORM else 25

# lora-block-weight's slot orders for SD1 (independent of the product's table) and a few of its presets (17 values)
SLOTS = {
    26: ["BASE", *[f"IN{i:02d}" for i in range(12)], "M00", *[f"OUT{i:02d}" for i in range(12)]],
    17: ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00", *[f"OUT{i:02d}" for i in range(3, 12)]],
}
PRESETS = {
    "ALL": [1.0] * 17,
    "NONE": [0.0] * 17,
    "ALL0.5": [0.5] * 17,
    "INALL": [1.0] * 7 + [0.0] * 10,
    "OUTALL": [1.0] + [0.0] * 7 + [1.0] * 9,
}
THIRDS = {"in": "unet.down_blocks.", "mid": "unet.mid_block.", "out": "unet.up_blocks."}


# ---------------------------------------------------------------------------------------------------------------
# The files
# ---------------------------------------------------------------------------------------------------------------

def write_loha(path: Path, model: LoadedModel, targets: list[str], rank: int = 3, alpha: float = 1.5,
               seed: int = 0) -> dict[str, torch.Tensor]:
    """A LoHa over Linear `targets`; returns the delta per layer: (alpha/r) (w1a @ w1b) ⊙ (w2a @ w2b)."""
    generator = torch.Generator().manual_seed(seed)
    modules = lora_targets(model)
    tensors, deltas = {}, {}
    for name in targets:
        out_features, in_features = modules[name].weight.shape
        key = kohya_name(model, name)
        w1a, w2a = (torch.randn(out_features, rank, generator=generator) * 0.3 for _ in range(2))
        w1b, w2b = (torch.randn(rank, in_features, generator=generator) * 0.3 for _ in range(2))
        tensors.update({f"{key}.hada_w1_a": w1a, f"{key}.hada_w1_b": w1b, f"{key}.hada_w2_a": w2a,
                        f"{key}.hada_w2_b": w2b, f"{key}.alpha": torch.tensor(alpha)})
        deltas[name] = (alpha / rank) * (w1a @ w1b) * (w2a @ w2b)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return deltas


@dataclass
class Setup:
    model: LoadedModel
    pristine: dict[str, torch.Tensor]
    files: dict[str, dict[str, torch.Tensor]]
    blocks: dict[str, str | None]
    engine: LoraEngine


def block_of(model: LoadedModel, name: str) -> str | None:
    """BASE / INnn / M00 / OUTnn of a target layer, from its LDM name; None outside the blocks."""
    if name.startswith("text_encoders."):
        return "BASE"
    match = re.match(r"(input_blocks|middle_block|output_blocks)\.?(\d*)", model.ldm_unet_names[name[len("unet."):]])
    if not match:
        return None
    if match.group(1) == "middle_block":
        return "M00"
    return ("IN" if match.group(1) == "input_blocks" else "OUT") + f"{int(match.group(2)):02d}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("properties") / "Lora"
    model = tiny_loaded_model("SD1")
    linear = [n for n, m in lora_targets(model).items() if m.weight.dim() == 2]
    files = {
        "kohya": write_kohya_lora(folder / "kohya.safetensors", model, seed=1, only=40),
        "locon": write_kohya_lora(folder / "locon.safetensors", model, seed=2, conv=True, text_encoder=False),
        "loha": write_loha(folder / "loha.safetensors", model, linear[::5] + linear[-12:], seed=3),
        "wide": write_kohya_lora(folder / "wide.safetensors", model, rank=8, alpha=4.0, seed=4),
    }
    registry = NetworkRegistry([folder], DiskCache(folder.parent / "cache.json"))
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    layers = {name for deltas in files.values() for name in deltas}
    blocks = {name: block_of(model, name) for name in layers}
    assert {b for b in blocks.values()} >= {"BASE", "IN01", "M00", "OUT11"}  # the files reach every kind of block
    yield Setup(model, state_snapshot(model), files, blocks, engine)
    engine.deactivate_all()


# ---------------------------------------------------------------------------------------------------------------
# Random tags and what they must do
# ---------------------------------------------------------------------------------------------------------------

WEIGHTS = st.sampled_from([0.0, 1.0, -1.0, 0.5, -0.35, 1.25, 2.0, 0.05, -2.0])


@dataclass
class Tag:
    """One drawn `<lora:...>` tag: its text and the values it was built from."""

    name: str
    te: list[tuple[float, float]]  # keyframes (position, weight); one frame = a constant
    unet: list[tuple[float, float]]
    start: int | None = None
    stop: int | None = None
    lbw: list[float] | None = None
    lbw_text: str | None = None
    thirds: dict[str, float] = field(default_factory=dict)

    def text(self) -> str:
        def weight(frames: list[tuple[float, float]]) -> str:
            if len(frames) == 1:
                return repr(frames[0][1])
            return ",".join(f"{w!r}@{p!r}" for p, w in frames)

        parts = [self.name, weight(self.te)]
        if self.unet != self.te:
            parts.append(f"unet={weight(self.unet)}")
        for key, value in (("start", self.start), ("stop", self.stop), ("lbw", self.lbw_text)):
            if value is not None:
                parts.append(f"{key}={value}")
        parts += [f"{key}={value!r}" for key, value in self.thirds.items()]
        return "<lora:" + ":".join(parts) + ">"


def at(frames: list[tuple[float, float]], step: int, total: int) -> float:
    """The documented schedule rule: positions in (0, 1) are fractions of the pass, others steps; keyframes in step
    order (equal steps in written order); linear between them, the first value before the first, the last after."""
    points = sorted(((p * total if 0 < p < 1 else p, w) for p, w in sorted(frames)), key=lambda point: point[0])
    if step <= points[0][0]:
        return points[0][1]
    for (p0, w0), (p1, w1) in zip(points, points[1:]):
        if step <= p1:
            return w0 if p1 == p0 else w0 + (w1 - w0) * (step - p0) / (p1 - p0)
    return points[-1][1]


def multiplier(tag: Tag, layer: str, block: str | None, step: int, total: int) -> float:
    if (tag.start is not None and step < tag.start) or (tag.stop is not None and step >= tag.stop):
        return 0.0
    value = at(tag.te if layer.startswith("text_encoders.") else tag.unet, step, total)
    if tag.lbw is not None:
        value *= dict(zip(SLOTS[len(tag.lbw)], tag.lbw)).get(block or "", 1.0)
    for key, weight in tag.thirds.items():
        if layer.startswith(THIRDS[key]):
            value *= weight
    return value


@st.composite
def frames(draw: st.DrawFn) -> list[tuple[float, float]]:
    """A constant, or 2-3 keyframes at distinct steps (some as fractions of the pass)."""
    if draw(st.booleans()):
        return [(0.0, draw(WEIGHTS))]
    positions = draw(st.lists(st.sampled_from([0, 1, 2, 3, 5, 8, 13, 0.25, 0.5]), min_size=2, max_size=3,
                              unique=True))
    return [(float(p), draw(WEIGHTS)) for p in positions]


@st.composite
def tags(draw: st.DrawFn, names: list[str]) -> Tag:
    te = draw(frames())
    tag = Tag(name=draw(st.sampled_from(names)), te=te, unet=draw(st.one_of(st.just(te), frames())))
    if draw(st.integers(0, 3)) == 0:
        tag.start = draw(st.integers(0, 6))
        tag.stop = draw(st.integers(tag.start + 1, 12))
    kind = draw(st.sampled_from(["none", "none", "lbw17", "lbw26", "preset", "thirds"]))
    if kind in ("lbw17", "lbw26"):
        tag.lbw = draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, -1.0, 0.25, 2.0]), min_size=int(kind[3:]),
                                max_size=int(kind[3:])))
        tag.lbw_text = ",".join(repr(v) for v in tag.lbw)
    elif kind == "preset":
        tag.lbw_text = draw(st.sampled_from(sorted(PRESETS)))
        tag.lbw = PRESETS[tag.lbw_text]
    elif kind == "thirds":
        keys = draw(st.lists(st.sampled_from(sorted(THIRDS)), min_size=1, max_size=3, unique=True))
        tag.thirds = {key: draw(WEIGHTS) for key in keys}
    return tag


@dataclass
class Round:
    tags: list[Tag]
    step: int
    total: int


@st.composite
def rounds(draw: st.DrawFn, names: list[str]) -> list[Round]:
    """1-4 activations, each 0-5 tags (repeats stack) at a random step of a random pass length."""
    result = []
    for _ in range(draw(st.integers(1, 4))):
        total = draw(st.integers(1, 20))
        result.append(Round(draw(st.lists(tags(names), max_size=5)), draw(st.integers(0, total - 1)), total))
    return result


NAMES = ["kohya", "locon", "loha", "wide"]


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not FULL_FORM,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(sequence=rounds(NAMES))
def test_random_activation_sequences_keep_weights_exact(setup: Setup, ledger: Ledger, sequence: list[Round]) -> None:
    model, engine = setup.model, setup.engine
    for number, round_ in enumerate(sequence):
        prompt = "a cat " + " ".join(tag.text() for tag in round_.tags)
        params = parse_prompt(prompt)[1].get("lora", [])
        requests = [parse_tag(p).request(BlockLayout.of_model(model), round_.step, round_.total) for p in params]
        report = engine.activate(requests)
        assert report.errors == {} and report.not_found == [], (prompt, report.errors)
        expected: dict[str, torch.Tensor] = {}
        for tag in round_.tags:
            for layer, delta in setup.files[tag.name].items():
                factor = multiplier(tag, layer, setup.blocks[layer], round_.step, round_.total)
                if factor != 0.0:
                    expected[layer] = expected.get(layer, torch.zeros_like(delta)) + factor * delta
        scale = max((d.abs().max().item() for d in expected.values()), default=0.0)
        wrong = weights_problems(model, setup.pristine, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-3))
        ledger.intact(not wrong, f"{prompt!r} at step {round_.step}/{round_.total} (round {number}): {wrong[:3]}")
    engine.deactivate_all()
    ledger.intact(not weights_problems(model, setup.pristine, {}), "deactivate_all after a random sequence")
