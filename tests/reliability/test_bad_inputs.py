"""Bad inputs are refused with a specific message and nothing else is lost.

* Every LoRA of the corpus (`corpus.lora_corpus`) is activated through the real engine and the `lora` extra-network
  handler together with a good LoRA: the registry scan does not crash and keeps the reason of each skipped file,
  the bad one is named with its specific message (in the activation report and in the generation's comments), the
  good one applies, and every weight equals pristine + exactly the good LoRA's delta; `deactivate_all` leaves the
  weights bitwise pristine. Pickles that would run code are refused and their command never runs.
* Every checkpoint of the corpus (`corpus.checkpoint_corpus`) is loaded through `ModelManager.load`: a
  `ModelLoadError` names the file and the problem, and the previous model stays current with its weights untouched.
* Random malformed layer groups (hypothesis: any strategy's parts, random shapes and dtypes) never break an
  activation: refused with a message naming the key, or applied to their own layer only.
* Malformed `<lora:...>` tags (non-numbers, NaN/Inf weights, lbw vectors of the wrong length, bad schedules, unknown
  arguments) are each named in the comments while the other LoRA of the prompt applies exactly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from lorakit.prompt import extra_network as extra_networks_lora
from modules.cache import DiskCache
from modules.embedded_default import DEFAULT_NAME
from modules.extra_networks import parse_prompt
from modules.generation_state import GenerationState
from modules.host import WebUI
from modules.options import Options
from modules.sd_model_types import LoadedModel
from modules.sd_models import ModelLoadError
from tests.helpers.corpus import CheckpointCase, LoraCase, checkpoint_corpus, lora_corpus, sum_deltas, weights_problems
from tests.helpers.lora_testing import kohya_name, lora_targets, state_snapshot, tiny_loaded_model, write_kohya_lora

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

Snapshot = dict[str, torch.Tensor]


@dataclass
class P:
    """The parts of a processing object the Lora handler reads and writes."""

    sd_model: LoadedModel
    comments: list[str] = field(default_factory=list)
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    is_hr_pass: bool = False
    steps: int = 20
    generation_state: GenerationState = field(default_factory=GenerationState)


@dataclass
class Setup:
    """A good LoRA with its known deltas, the corpus, the disk cache all registries share. (Each test builds its own
    tiny SD1 model, the same weights as the one the files were made for, so that one test's loss cannot spill.)"""

    good_root: Path
    good: dict[str, torch.Tensor]
    cases: list[LoraCase]
    corpus_root: Path
    cache: DiskCache


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, ledger: Ledger) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("bad-inputs")
    model = tiny_loaded_model("SD1")
    good = write_kohya_lora(folder / "good" / "good.safetensors", model, seed=5, only=6)
    cases = lora_corpus(folder / "corpus", model, ledger.full)
    yield Setup(folder / "good", good, cases, folder / "corpus", DiskCache(folder / "cache.json"))
    for case in cases:  # let pytest clean up the unreadable file
        if case.path is not None and case.path.is_file() and not case.path.is_symlink():
            case.path.chmod(0o644)


def handler_for(engine: LoraEngine, model: LoadedModel) -> extra_networks_lora.ExtraNetworkLora:
    options = Options(None)
    options.add("lora_add_hashes_to_infotext", True, "hashes")
    options.add("lora_lbw_presets", "", "presets")
    return extra_networks_lora.ExtraNetworkLora(engine, options, lambda: model)


def activate_prompt(handler: extra_networks_lora.ExtraNetworkLora, model: LoadedModel, prompt: str) -> P:
    p = P(model)
    handler.activate(p, parse_prompt(prompt)[1].get("lora", []))
    return p


# ---------------------------------------------------------------------------------------------------------------
# LoRA files
# ---------------------------------------------------------------------------------------------------------------

def test_one_scan_over_the_whole_corpus_keeps_every_reason(setup: Setup) -> None:
    """All cases in one folder tree: the scan finishes, each skipped file keeps its reason, the others are listed.
    (The inputs are counted once, by the activation test below.)"""
    registry = NetworkRegistry([setup.corpus_root], setup.cache)
    registry.refresh()  # must not raise, whatever the folder holds
    problems = []
    for case in setup.cases:
        if case.stage == "scan":
            reason = registry.errors.get(str(case.path), "")
            if case.fragment not in reason:
                problems.append(f"{case.name}: scan reason {reason!r} lacks {case.fragment!r}")
        else:
            relative = case.path.relative_to(setup.corpus_root).with_suffix("").as_posix()
            if registry.find(relative) is None:
                problems.append(f"{case.name}: not listed as {relative!r} ({registry.errors.get(str(case.path))})")
    assert not problems, "\n".join(problems)
    assert registry.find("base") is not None  # the good file the truncations were cut from is listed


def run_lora_case(setup: Setup, model: LoadedModel, pristine: Snapshot, case: LoraCase, ledger: Ledger,
                  good_first: bool) -> list[str]:
    """Activate `<lora:case> <lora:good>` (or the other way round) through the handler; return what is wrong besides
    the weights (those are ledger.intact checks, after activation and after deactivate_all)."""
    registry = NetworkRegistry([setup.good_root, case.root], setup.cache)
    engine = LoraEngine(registry)
    engine.set_model(model)
    handler = handler_for(engine, model)
    problems = []
    try:
        tags = [f"<lora:{case.request}:1>", "<lora:good:1>"]
        p = activate_prompt(handler, model, "a cat " + " ".join(tags[::-1] if good_first else tags))
        ledger.bad_input()
        report = engine.last_report
        active = [a.network.name for a in report.active]
        expected = dict(setup.good)
        if case.stage == "scan":
            reason = registry.errors.get(str(case.path), "")
            comment = f"Lora {case.request} not applied: {registry.skipped_reason(case.request)}"
            if report.not_found != [case.request] or case.fragment not in reason or comment not in p.comments \
                    or case.fragment not in comment:
                problems.append(f"not found {report.not_found}, reason {reason!r}, comments {p.comments}")
        elif case.stage == "load":
            message = report.errors.get(case.request, "")
            if case.fragment not in message or not any(case.fragment in c for c in p.comments):
                problems.append(f"error {message!r}, comments {p.comments}")
        else:
            expected = sum_deltas((setup.good, 1.0), (case.deltas, 1.0))
            warned = [w for w in report.warnings if case.fragment and case.fragment in w]
            if case.request in report.errors or (case.fragment and not warned) or len(active) != 2:
                problems.append(f"errors {report.errors}, warnings {report.warnings}, active {active}")
        if "good" not in active or report.errors.get("good"):
            problems.append(f"the good LoRA did not apply ({report.errors})")
        hashes = p.extra_generation_params.get("Lora hashes", "")
        if f"good: {registry.find('good').shorthash}" not in hashes:
            problems.append(f"Lora hashes {hashes!r} lacks the good LoRA")
        if case.marker is not None and case.marker.exists():
            problems.append(f"the pickle's command ran ({case.marker} exists)")
        wrong = weights_problems(model, pristine, expected)
        ledger.intact(not wrong, f"{case.name}: weights after activation: {wrong[:3]}")
    finally:
        engine.deactivate_all()
    wrong = weights_problems(model, pristine, {})
    ledger.intact(not wrong, f"{case.name}: weights after deactivate_all: {wrong[:3]}")
    return problems


def test_every_bad_lora_is_named_while_the_good_one_applies_exactly(setup: Setup, ledger: Ledger) -> None:
    """Every case runs, the bad tag before or after the good one in turn (a loss is recorded in the ledger, a crash
    is noted, and the next case goes on); the test fails at the end."""
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    problems, lost = [], []
    for number, case in enumerate(setup.cases):
        try:
            problems += [f"{case.name}: {problem}"
                         for problem in run_lora_case(setup, model, pristine, case, ledger, good_first=number % 2 == 1)]
        except pytest.fail.Exception as exc:  # ledger.intact recorded the loss
            lost.append(str(exc))
        except Exception as exc:  # a crash of the product is this case's finding
            problems.append(f"{case.name}: activation raised {type(exc).__name__}: {exc}")
    assert not lost and not problems, "\n".join(lost + problems)


def test_duplicate_stems_are_each_reachable(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    """The same stem in two subfolders: `a/style` and `b/style` are each reachable and both are listed; the bare stem
    is the first file in (natural) scan order, so it does not depend on the file system's listing order (A1111 takes
    whichever its unsorted walk finds last), and the log names the other file's `sub/stem`."""
    root = next(case.root for case in setup.cases if case.name == "fs_duplicate_stem_a")
    registry = NetworkRegistry([root], setup.cache)
    with caplog.at_level(logging.WARNING, logger="lorakit.library.registry"):
        registry.refresh()
    assert f"Lora name 'style' is used by several files; {root / 'b' / 'style.safetensors'} is reachable as " \
           "'b/style'" in caplog.messages
    assert registry.find("style") is registry.find("a/style")
    assert registry.find("b/style").filename == str(root / "b" / "style.safetensors")
    assert sorted(entry.relative_name for entry in registry.entries()) == ["a/style", "b/style"]


def test_an_unreadable_file_is_skipped_with_its_reason(setup: Setup) -> None:
    """The mode-000 case is part of the corpus only for a user who cannot read such a file (root can)."""
    if os.geteuid() == 0:
        pytest.skip("running as root, who reads a mode-000 file anyway")
    case = next(case for case in setup.cases if case.name == "fs_unreadable")
    assert case.stage == "scan" and case.fragment == "Permission denied"


def test_a_long_named_lora_gets_its_sidecar_and_preview_lookup(setup: Setup) -> None:
    """A 255-byte file name: the preview lookup (whose candidate names are longer than the limit) finds nothing
    instead of failing, and the sidecar (`<stem>.json`, 248 bytes) is written and read back."""
    from lorakit.library import sidecars as user_metadata  # noqa: PLC0415

    case = next(case for case in setup.cases if case.name == "fs_long_name")
    registry = NetworkRegistry([case.root], setup.cache)
    registry.refresh()
    entry = registry.find(case.request)
    assert entry is not None and entry.preview_path() is None
    user_metadata.save_user_metadata(entry, {"notes": "long name"})
    assert user_metadata.read_user_metadata(entry)["notes"] == "long name"
    assert sorted(p.name for p in case.root.iterdir() if p.name.startswith(".")) == []  # no temp file left


# Parts of every strategy (LoRA/LoCon/Tucker/DoRA, LoHa, LoKr, IA3, Full, Norm, GLoRA, OFT/BOFT, legacy offsets)
PART_FAMILIES = [
    ["lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "scale", "dora_scale", "bias"],
    ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2", "alpha"],
    ["lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "alpha"],
    ["weight", "on_input"], ["diff", "diff_b"], ["w_norm", "b_norm"],
    ["a1.weight", "a2.weight", "b1.weight", "b2.weight", "bm.weight"],
    ["oft_blocks", "oft_diag", "rescale", "constraint", "alpha"],
    ["bias_indices", "bias_values", "bias_size", "lora_up.weight", "lora_down.weight"],
]
FUZZ_EXAMPLES = 300 if os.environ.get("RELIABILITY_FULL", "") not in ("", "0") else 30


@st.composite
def layer_groups(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """1-5 parts of one strategy with random shapes (0-4 dims, sizes 0-96) and dtypes."""
    family = draw(st.sampled_from(PART_FAMILIES))
    names = draw(st.lists(st.sampled_from(family), min_size=1, max_size=5, unique=True))
    group = {}
    for name in names:
        shape = draw(st.lists(st.sampled_from([0, 1, 2, 3, 4, 8, 32, 96]), max_size=4))
        dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                      torch.bool]))
        group[name] = (torch.ones(shape) if dtype == torch.bool else torch.randn(shape) * 0.01).to(dtype)
    return group


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=FUZZ_EXAMPLES < 100,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(group=layer_groups(), conv=st.booleans())
def test_no_malformed_layer_group_breaks_an_activation(setup: Setup, fuzz_model: tuple[LoadedModel, Snapshot],
                                                       tmp_path_factory: pytest.TempPathFactory, ledger: Ledger,
                                                       group: dict[str, torch.Tensor], conv: bool) -> None:
    """A file with one random layer group (any strategy's parts, random shapes and dtypes) beside the good LoRA:
    the activation never raises; the group is refused with a message naming its key or applied to its own layer;
    the good LoRA applies exactly and every other tensor stays bitwise pristine; deactivate_all restores all."""
    model, pristine = fuzz_model
    target = [n for n, m in lora_targets(model, conv=True).items() if (m.weight.dim() == 4) == conv][-1]
    assert target not in setup.good
    key = kohya_name(model, target)
    folder = tmp_path_factory.mktemp("fuzz")
    save_file({f"{key}.{part}": tensor for part, tensor in group.items()}, str(folder / "fuzz.safetensors"))
    engine = LoraEngine(NetworkRegistry([setup.good_root, folder], None))
    engine.set_model(model)
    ledger.bad_input()
    try:
        report = engine.activate([NetworkRequest("fuzz", 0.5, 0.5), NetworkRequest("good", 1.0, 1.0)])
        applied = [a.network.name for a in report.active]
        assert "good" in applied and "good" not in report.errors, report.errors
        if "fuzz" not in applied:
            assert key in report.errors.get("fuzz", "") or "nothing in it fits" in report.errors.get("fuzz", "")
        wrong = [p for p in weights_problems(model, pristine, setup.good) if not p.startswith(f"{target}.")]
        ledger.intact(not wrong, f"fuzzed group {sorted(group)} on {target}: {wrong[:3]}")
    finally:
        engine.deactivate_all()
    ledger.intact(not weights_problems(model, pristine, {}), f"fuzzed group {sorted(group)}: deactivate_all")


@pytest.fixture(scope="module")
def fuzz_model() -> tuple[LoadedModel, Snapshot]:
    model = tiny_loaded_model("SD1")
    return model, state_snapshot(model)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> WebUI:
    return WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("ckpt-corpus"))], load_extensions_now=False)


def test_every_bad_checkpoint_is_named_and_the_previous_model_stays(webui: WebUI, setup: Setup,
                                                                     ledger: Ledger) -> None:
    current = webui.models.load(DEFAULT_NAME)
    before = state_snapshot(current)
    title = webui.options.get("sd_model_checkpoint")
    ckpt_dir = Path(webui.paths.ckpt_dir)
    cases: list[CheckpointCase] = checkpoint_corpus(ckpt_dir, ckpt_dir / DEFAULT_NAME,
                                                    setup.good_root / "good.safetensors", ledger.full)
    (ckpt_dir / "folder.safetensors").mkdir()
    cases.append(CheckpointCase("directory", "folder.safetensors", "checkpoint 'folder.safetensors' not found in"))
    problems = []
    for case in cases:
        ledger.bad_input()
        try:
            webui.models.load(case.request)
        except ModelLoadError as exc:
            message = str(exc)
            if case.fragment not in message or Path(case.request).name not in message:
                problems.append(f"{case.name}: {message[:300]!r} lacks {case.fragment!r} or the file name")
        else:
            problems.append(f"{case.name}: loaded")
        if webui.models.current is not current or webui.options.get("sd_model_checkpoint") != title:
            problems.append(f"{case.name}: the current model changed")
        if case.marker is not None and case.marker.exists():
            problems.append(f"{case.name}: the pickle's command ran")
    assert not problems, "\n".join(problems)
    after = state_snapshot(webui.models.current)
    ledger.intact(all(torch.equal(after[k], v) for k, v in before.items()),
                  "the current checkpoint's weights after failed loads")


# ---------------------------------------------------------------------------------------------------------------
# Prompt tags
# ---------------------------------------------------------------------------------------------------------------

LBW26 = ",".join(["1"] * 26)
BAD_TAGS = [
    ("<lora:other:abc>", "<lora:other:abc>: weight 'abc' is not a number"),
    ("<lora:other:>", "<lora:other:>: weight '' is not a number"),
    ("<lora:other:nan>", "<lora:other:nan>: weight 'nan' is not a finite number"),
    ("<lora:other:inf>", "<lora:other:inf>: weight 'inf' is not a finite number"),
    ("<lora:other:1:-inf>", "<lora:other:1:-inf>: unet weight '-inf' is not a finite number"),
    ("<lora:other:te=nan>", "<lora:other:te=nan>: te 'nan' is not a finite number"),
    ("<lora:other:1:unet=1e999>", "<lora:other:1:unet=1e999>: unet '1e999' is not a finite number"),
    ("<lora:other:1:1:0>", "<lora:other:1:1:0>: dyn must be at least 1, got 0"),
    ("<lora:other:1:dyn=1.5>", "<lora:other:1:dyn=1.5>: dyn '1.5' is not a whole number"),
    ("<lora:other:1:hr=abc>", "<lora:other:1:hr=abc>: hr 'abc' is not a number"),
    ("<lora:other:1:lbw=1,0,1>", "<lora:other:1:lbw=1,0,1>: lbw has 3 values; a SD1 model takes 17 or 26"),
    (f"<lora:other:1:lbw={LBW26},1>", "lbw has 27 values; a SD1 model takes 17 or 26"),
    ("<lora:other:1:lbw=NOPE>", "<lora:other:1:lbw=NOPE>: unknown lbw preset 'NOPE' for SD1"),
    ("<lora:other:1:lbw=1,x,1>", "lbw value '1,x,1' is neither a preset nor comma-separated numbers"),
    (f"<lora:other:1:lbw=nan,{LBW26[2:]}>", "lbw value nan in 'nan,1,"),
    (f"<lora:other:1:lbw=inf,{LBW26[2:]}>", "lbw value inf in 'inf,1,"),
    ("<lora:other:1:in=abc>", "<lora:other:1:in=abc>: in 'abc' is not a number"),
    ("<lora:other:1:mid=nan>", "<lora:other:1:mid=nan>: mid 'nan' is not a finite number"),
    ("<lora:other:1:start=abc>", "<lora:other:1:start=abc>: start 'abc' is not a number"),
    ("<lora:other:1:stop=-1>", "<lora:other:1:stop=-1>: stop '-1' must be a finite number >= 0"),
    ("<lora:other:0.2@abc>", "<lora:other:0.2@abc>: weight: step in '0.2@abc' 'abc' is not a number"),
    ("<lora:other:x@0,1@5>", "<lora:other:x@0,1@5>: weight: weight 'x' in 'x@0,1@5' is not a number"),
    ("<lora:other:1@0,nan@5>", "<lora:other:1@0,nan@5>: weight: weight 'nan' in '1@0,nan@5' is not finite"),
    ("<lora:other:te=1@0,1@-2>", "<lora:other:te=1@0,1@-2>: te: step in '1@0,1@-2' '-2' must be a finite number >= 0"),
    ("<lora:other:1:bogus=1>", "<lora:other:1:bogus=1>: unknown argument bogus"),
    ("<lora::1>", "<lora::1>: the LoRA name is missing"),
    ("<lora:other:1:1:1:1:1>", "<lora:other:1:1:1:1:1>: too many values (name, te, unet, dyn at most)"),
    ("<lora:nonexistent:1>", "Lora not found: nonexistent"),
    ("<lora:other:1e300>", "Lora other not applied: failed on layer"),  # finite, but float32 overflows
]


def test_each_malformed_tag_is_named_and_the_other_lora_applies(setup: Setup, tmp_path: Path,
                                                                ledger: Ledger) -> None:
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    write_kohya_lora(tmp_path / "Lora" / "other.safetensors", model, seed=21, only=4)
    registry = NetworkRegistry([setup.good_root, tmp_path / "Lora"], setup.cache)
    engine = LoraEngine(registry)
    engine.set_model(model)
    handler = handler_for(engine, model)
    problems = []
    for tag, message in BAD_TAGS:
        ledger.bad_input()
        p = activate_prompt(handler, model, f"a cat {tag} <lora:good:0.5>")
        if not any(message in comment for comment in p.comments):
            problems.append(f"{tag}: comments {p.comments} lack {message!r}")
        if [a.network.name for a in engine.active] != ["good"]:
            problems.append(f"{tag}: active {[a.network.name for a in engine.active]}")
        wrong = weights_problems(model, pristine, sum_deltas((setup.good, 0.5)))
        ledger.intact(not wrong, f"{tag}: weights {wrong[:3]}")
    assert not problems, "\n".join(problems)
    # all of them in one prompt: every message, and the good LoRA still applies exactly
    p = activate_prompt(handler, model, "a cat " + " ".join(tag for tag, _ in BAD_TAGS) + " <lora:good:0.5>")
    assert [m for _, m in BAD_TAGS if not any(m in comment for comment in p.comments)] == []
    wrong = weights_problems(model, pristine, sum_deltas((setup.good, 0.5)))
    ledger.intact(not wrong, f"all bad tags at once: weights {wrong[:3]}")
    engine.deactivate_all()
    ledger.intact(not weights_problems(model, pristine, {}), "after the bad tags: not pristine")
