"""The Script part of a generation tab: always-on scripts' UI, the Script dropdown and each script's UI.

A generation tab calls `build_script_ui(webui, tabname, is_img2img)` inside its settings column and gets
`ScriptControls`: add `controls.inputs()` to the generate event's inputs and turn their values into the request's
`script_name`, `script_args` and `alwayson_scripts` with `controls.request_fields(values)` (the API's fields, so the
UI and the API run scripts the same way). Choosing a script in the dropdown shows only that script's UI.

Presets: browser code (e.g. the Lora card's "compare" action) writes JSON `{"script": name, "kind": ..., "value":
...}` into the hidden textbox `#{tabname}_script_preset` and sends an input event (the textbox's change event runs
the preset); the named script's `presets(kind, value)` says which of its arguments get which values, and the
dropdown switches to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.scripts import Script, ScriptNotFoundError, ScriptRunner

log = logging.getLogger(__name__)

NONE = "None"


@dataclass
class ScriptControls:
    """The components of one tab's scripts, and how their values become request fields."""

    runner: ScriptRunner
    dropdown: Any
    components: list[Any] = field(default_factory=list)  # every script's argument components, script by script
    spans: list[tuple[Script, int, int]] = field(default_factory=list)  # (script, first, end) in `components`
    groups: list[Any] = field(default_factory=list)  # one Group per selectable script, in `runner.selectable` order
    preset_box: Any = None

    def inputs(self) -> list[Any]:
        """The components to add to the generate event's inputs: the dropdown, then every argument component."""
        return [self.dropdown, *self.components]

    def request_fields(self, values: list[Any]) -> dict[str, Any]:
        """`script_name`, `script_args` and `alwayson_scripts` from the values of `inputs()`."""
        title, args = values[0], list(values[1:])
        fields: dict[str, Any] = {"script_name": None, "script_args": [], "alwayson_scripts": {}}
        for script, first, end in self.spans:
            if script.alwayson:
                fields["alwayson_scripts"][script.name] = {"args": args[first:end]}
            elif title and title != NONE and script.title() == title:
                fields["script_name"] = script.name
                fields["script_args"] = args[first:end]
        return fields


def build_script_ui(webui: Any, tabname: str, is_img2img: bool) -> ScriptControls:
    """Always-on scripts' UI, the Script dropdown and the selectable scripts' UI (see the module docstring)."""
    runner = webui.scripts.runner(is_img2img)
    controls = ScriptControls(runner=runner, dropdown=None)

    def add(script: Script) -> None:
        try:
            built = runner.build_ui(script)
        except Exception:
            log.exception("script %s: ui() failed", script.name)
            built = []
        controls.spans.append((script, len(controls.components), len(controls.components) + len(built)))
        controls.components.extend(built)

    for script in runner.alwayson:
        with gr.Group(elem_id=f"{tabname}_script_{_slug(script.name)}"):
            add(script)
    controls.dropdown = gr.Dropdown([NONE, *runner.titles()], value=NONE, label="Script",
                                    elem_id=f"{tabname}_script_list")
    for script in runner.selectable:
        with gr.Group(visible=False, elem_id=f"{tabname}_script_{_slug(script.name)}") as group:
            add(script)
        controls.groups.append(group)

    def show(title: str) -> list[Any]:
        return [gr.update(visible=title == script.title()) for script in runner.selectable]

    controls.dropdown.change(show, inputs=[controls.dropdown], outputs=controls.groups, show_progress="hidden",
                             api_visibility="undocumented")
    controls.preset_box = gr.Textbox(visible="hidden", elem_id=f"{tabname}_script_preset")
    selectable_spans = [(s, a, b) for s, a, b in controls.spans if not s.alwayson]
    outputs = [controls.dropdown, *controls.groups,
               *[c for _, first, end in selectable_spans for c in controls.components[first:end]]]

    def apply_preset(text: str) -> list[Any]:
        unchanged = [gr.update() for _ in outputs]
        try:
            request = json.loads(text or "{}")
            script = runner.find_selectable(str(request.get("script", "")))
        except (json.JSONDecodeError, AttributeError, ScriptNotFoundError) as exc:
            log.warning("script preset %r ignored: %s", text, exc)
            return unchanged
        values = script.presets(str(request.get("kind", "")), str(request.get("value", ""))) or {}
        updates: list[Any] = [gr.update(value=script.title()), *show(script.title())]
        for candidate, first, end in selectable_spans:
            for index in range(end - first):
                given = candidate is script and index in values
                updates.append(gr.update(value=values[index]) if given else gr.update())
        return updates

    controls.preset_box.change(apply_preset, inputs=[controls.preset_box], outputs=outputs, show_progress="hidden",
                              api_visibility="undocumented")
    return controls


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")
