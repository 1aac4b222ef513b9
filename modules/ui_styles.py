"""The styles box of a generation tab: a multi-select of the styles in styles.csv, a button that writes the selected
styles into the prompt boxes (A1111's paintbrush) and one that reads the file again.

`styles_box(webui, tabname, prompt, negative_prompt)` builds it inside the current Gradio layout and returns the
dropdown, whose value (the style names) goes into the request's `styles`; the txt2img tab uses it and the img2img tab
can too. Styles are read-only here: edit styles.csv (A1111's format) and press refresh.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr


def _warnings_html(webui: Any) -> str:
    warnings = webui.styles.warnings
    return "".join(f"<p class='webui-comment'>{html.escape(w)}</p>" for w in warnings)


def styles_box(webui: Any, tabname: str, prompt: Any, negative_prompt: Any) -> Any:
    """Build the styles row for `tabname` and wire its buttons to the `prompt`/`negative_prompt` textboxes."""
    database = webui.styles
    with gr.Row(elem_id=f"{tabname}_styles_row"):
        dropdown = gr.Dropdown(choices=database.names(), value=[], multiselect=True, label="Styles",
                               elem_id=f"{tabname}_styles", scale=6)
        apply = gr.Button("\u270e", elem_id=f"{tabname}_style_apply", scale=0, min_width=40)
        refresh = gr.Button("\u21bb", elem_id=f"{tabname}_styles_refresh", scale=0, min_width=40)
    notes = gr.HTML(_warnings_html(webui), elem_id=f"{tabname}_styles_warnings")

    def apply_to_prompts(names: list[str] | None, text: str, negative: str) -> tuple[str, str, Any]:
        names = list(names or [])
        return database.apply_to_prompt(text or "", names), database.apply_to_negative_prompt(negative or "", names), \
            gr.update(value=[])

    def reread(selected: list[str] | None) -> tuple[Any, str]:
        database.reload()
        names = database.names()
        return gr.update(choices=names, value=[n for n in selected or [] if n in names]), _warnings_html(webui)

    apply.click(apply_to_prompts, inputs=[dropdown, prompt, negative_prompt], outputs=[prompt, negative_prompt, dropdown],
                show_progress="hidden", api_visibility="undocumented")
    refresh.click(reread, inputs=[dropdown], outputs=[dropdown, notes], show_progress="hidden",
                  api_visibility="undocumented")
    return dropdown
