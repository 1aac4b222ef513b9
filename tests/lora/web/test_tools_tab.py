"""The "LoRA tools" tab's actions on a real WebUI: merge into a checkpoint copy, extract it back, combine LoRAs; bad
names are refused with a message; the tab builds."""

from __future__ import annotations

import pytest

from lorakit.web import tools_tab as ui_lora_tools
from modules.host import WebUI


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    ui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("tools"))])
    ui.models.get()
    return ui


def test_merge_extract_and_combine_from_the_tab(webui):
    base = webui.models.current.checkpoint.title
    message = ui_lora_tools._safe(ui_lora_tools.run_merge, webui, "<lora:demo_lora:1>", "merged")
    assert message == "Wrote merged.safetensors"
    merged = webui.models.find("merged.safetensors")
    assert merged is not None
    message = ui_lora_tools._safe(ui_lora_tools.run_extract, webui, base, "merged.safetensors", "back", 4, 0, False)
    assert message.startswith("Wrote back.safetensors: ") and "relative error max" in message
    registry = webui.services["lora"].registry
    assert registry.find("back") is not None
    message = ui_lora_tools._safe(ui_lora_tools.run_combine, webui, "<lora:demo_lora:0.5> <lora:demo_loha:1>", "combo", 0)
    assert message.startswith("Wrote combo.safetensors: ") and registry.find("combo") is not None
    assert webui.services["lora"].active == []  # combining leaves nothing applied


def test_bad_inputs_give_messages(webui):
    run = ui_lora_tools._safe
    assert run(ui_lora_tools.run_combine, webui, "<lora:demo_lora:1>", "../escape", 0).startswith(
        "Error: output name '../escape' must be a plain file name")
    assert run(ui_lora_tools.run_combine, webui, "no tags", "x", 0).startswith("Error: write the LoRAs to use as tags")
    assert run(ui_lora_tools.run_extract, webui, "nope", "nope", "y", 4, 0, False) == "Error: checkpoint not found: 'nope'"
    assert run(ui_lora_tools.run_merge, webui, "<lora:demo_lora:abc>", "m2") == (
        "Error: <lora:demo_lora:abc>: weight 'abc' is not a number")


def test_the_tab_builds(webui):
    block, title, elem_id = ui_lora_tools.create_tab(webui)
    assert (title, elem_id) == ("LoRA tools", "lora_tools")
    labels = {getattr(c, "label", None) for c in block.blocks.values()}
    assert {"Base checkpoint", "LoRAs to combine", "Output checkpoint name"} <= labels
