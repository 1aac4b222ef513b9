"""The X/Y/Z plot's parts without a server: A1111's value syntax, the axis list clients index into, the cell order
that keeps neighbouring cells one change apart, the lora tag rewriting of the LoRA axes, and script file loading
(a Script class and A1111's `setup(webui)` in the same file)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lorakit.prompt import tag_edit
from lorakit.prompt.tags import TagError
from modules.processing import ProcessingError
from modules.scripts import ScriptRegistry, import_script_file
from tests.helpers.paths import ROOT


@pytest.fixture(scope="module")
def xyz():
    name = "scripts_xyz_grid"
    return sys.modules.get(name) or import_script_file(ROOT / "scripts" / "xyz_grid.py", name)


@pytest.mark.parametrize(("text", "expected"), [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-9 (+3)", [1, 4, 7]),
    ("10-1 (-4)", [10, 6, 2]),
    ("1-10 [4]", [1, 4, 7, 10]),
    ("3, 1-2, 8", [3, 1, 2, 8]),
])
def test_integer_ranges(xyz, text, expected):
    assert xyz.expand_ints(xyz.split_values(text)) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("0.2-1.2 [6]", [0.2, 0.4, 0.6, 0.8, 1.0, 1.2]),
    ("0-1 (+0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("-1, 0.5", [-1.0, 0.5]),
])
def test_float_ranges(xyz, text, expected):
    assert xyz.expand_floats(xyz.split_values(text)) == pytest.approx(expected, abs=1e-9)


def test_csv_quoting_keeps_commas_and_empty_values(xyz):
    assert xyz.split_values('"1,0,0,1", ALL, ') == ["1,0,0,1", "ALL", ""]


def test_axis_list_matches_a1111_indices_and_has_lora_axes(xyz):
    txt2img = [axis.label for axis in xyz.tab_axes(False)]
    img2img = [axis.label for axis in xyz.tab_axes(True)]
    assert txt2img[:12] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                            "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name"]
    assert txt2img[37] == "RNG source" and img2img[6] == "Image CFG Scale" and "Hires steps" not in img2img
    assert txt2img[38:] == ["Lora weight", "Lora file", "Lora block preset", "Lora TE weight", "Lora UNet weight",
                            "Lora start step", "Lora stop step"]
    axes = xyz.tab_axes(False)
    assert xyz.resolve_axis(axes, 7).label == "Prompt S/R" and xyz.resolve_axis(axes, "cfg scale").label == "CFG Scale"
    with pytest.raises(ProcessingError, match="out of range"):
        xyz.resolve_axis(axes, 99)


def test_snake_order_neighbours_differ_in_one_axis(xyz):
    order = xyz.snake_order([3, 2, 4])
    assert len(order) == len(set(order)) == 24
    assert all(sum(a != b for a, b in zip(order[i], order[i + 1])) == 1 for i in range(23))


def test_costliest_axis_is_outermost(xyz):
    # x = Lora weight (costly), y = seed: all seeds of one weight before the next weight
    order = xyz.cell_order({"x": 3, "y": 2, "z": 1}, {"x": xyz.COST_LORA, "y": 0.0, "z": 0.0})
    assert [cell["x"] for cell in order] == [0, 0, 1, 1, 2, 2]
    # A1111's default with equal costs: z, then y, then x innermost
    order = xyz.cell_order({"x": 2, "y": 2, "z": 1}, {"x": 0.0, "y": 0.0, "z": 0.0})
    assert [(c["x"], c["y"]) for c in order] == [(0, 0), (1, 0), (1, 1), (0, 1)]
    sr = next(a for a in xyz.tab_axes(False) if a.label == "Prompt S/R")
    assert sr.cost_of(["<lora:a:1>", "<lora:a:0.5>"]) == xyz.COST_LORA and sr.cost_of(["cat", "dog"]) == 0.0


def test_lora_axis_values_name_their_lora(xyz):
    class Ctx:
        webui = None

    weight = next(a for a in xyz.tab_axes(False) if a.label == "Lora weight")
    values = xyz.parse_axis(Ctx(), weight, "my_lora: 0-1 [3]", None, False)
    assert values == [xyz.LoraValue("my_lora", 0.0), xyz.LoraValue("my_lora", 0.5), xyz.LoraValue("my_lora", 1.0)]
    assert xyz.parse_axis(Ctx(), weight, "0.5, 1", None, False) == [xyz.LoraValue(None, 0.5), xyz.LoraValue(None, 1.0)]
    assert weight.label_of(values[1]) == "my_lora weight: 0.5"


def test_tag_edit_changes_only_the_target_tag():
    prompt = "a cat <lora:a:0.8:0.6:4:lbw=ALL> and <lora:b:1>, snow"
    assert tag_edit.set_tag_value(prompt, "a", "weight", 0.25) == "a cat <lora:a:0.25:0.25:4:lbw=ALL> and <lora:b:1>, snow"
    assert tag_edit.set_tag_value(prompt, "b", "weight", 0.5) == "a cat <lora:a:0.8:0.6:4:lbw=ALL> and <lora:b:0.5>, snow"
    assert tag_edit.set_tag_value(prompt, None, "te", 0.3).startswith("a cat <lora:a:0.8:0.6:4:lbw=ALL:te=0.3>")
    assert "<lora:b:1:unet=0>" in tag_edit.set_tag_value(prompt, "b", "unet", 0)
    assert "<lora:b:1:lbw=OUTD>" in tag_edit.set_tag_value(prompt, "b", "lbw", "OUTD")
    assert "<lora:b:1:start=3>" in tag_edit.set_tag_value(prompt, "b", "start", "3")
    assert tag_edit.set_tag_value(prompt, "b", "name", "b_epoch2").endswith("<lora:b_epoch2:1>, snow")
    assert tag_edit.set_tag_value("a cat", "new", "weight", 0.5) == "a cat <lora:new:0.5>"
    with pytest.raises(TagError, match="no <lora"):
        tag_edit.set_tag_value("a cat", None, "weight", 0.5)
    with pytest.raises(TagError, match="start"):
        tag_edit.set_tag_value(prompt, "b", "start", "soon")


SCRIPT_FILE = '''
import modules.scripts as scripts

CALLS = []


class Script(scripts.Script):
    def title(self):
        return "Echo"

    def ui(self, is_img2img):
        import gradio as gr

        return [gr.Textbox("hi", label="Text")]

    def run(self, p, text="hi"):
        return text


class Hidden(scripts.Script):
    def title(self):
        return "Only img2img"

    def show(self, is_img2img):
        return is_img2img


def setup(webui):
    CALLS.append(webui)
'''


def test_script_files_load_with_classes_and_broken_ones_are_reported(tmp_path: Path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "echo.py").write_text(SCRIPT_FILE)
    (folder / "broken.py").write_text("raise RuntimeError('boom')\n")
    registry = ScriptRegistry()
    try:
        registry.load_folder(folder, prefix="test_scripts")
        assert [cls.__name__ for cls in registry.classes] == ["Script", "Hidden"]
        assert "RuntimeError: boom" in registry.errors[str(folder / "broken.py")]
        assert registry.txt2img.titles() == ["Echo"] and registry.img2img.titles() == ["Echo", "Only img2img"]
        selection = registry.txt2img.selection("echo", ["yo"])
        assert selection.run(object(), lambda p: "plain") == "yo"
        assert registry.txt2img.selection(None).run(object(), lambda p: "plain") == "plain"
    finally:
        for name in ("test_scripts_echo", "test_scripts_broken"):
            sys.modules.pop(name, None)


def test_extension_scripts_keep_setup_and_add_classes(tmp_path):
    """The Lora extension's lora_script.py (only `setup(webui)`) still starts the extension; the top-level scripts
    and extension files with Script classes all end up in the registry."""
    from modules.host import WebUI  # noqa: PLC0415

    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"])
    assert "lora" in webui.services  # lora_script.setup(webui) ran
    names = {script.name for script in webui.scripts.txt2img.scripts}
    assert {"x/y/z plot", "prompt matrix", "prompts from file or textbox"} <= names
    assert not webui.scripts.errors
