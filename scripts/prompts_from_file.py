"""The "Prompts from file or textbox" script (A1111's): one generation per line of text.

Arguments (A1111's positional order): checkbox_iterate ("Iterate seed every line"), checkbox_iterate_batch ("Use same
random seed for all lines"), prompt_position ("start"/"end": where a plain line goes relative to the tab's prompt),
prompt_txt (the lines).
A line is a prompt, or options in A1111's command-line form: `--prompt "a cat <lora:x:0.5>" --negative_prompt "..."
--steps 10 --seed 5 --cfg_scale 6 --sampler_name "Euler a" --width 512 --height 512 --batch_size 1 --n_iter 1 ...`
(the names in `LINE_OPTIONS`). A line's prompt joins the tab's prompt at the chosen position. An unknown option or a
malformed value is refused (422 in the API) naming the line, before anything is generated.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import Any

import gradio as gr

from modules import processing, scripts
from modules.processing import ProcessingError

LINE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "prompt": str,
    "negative_prompt": str,
    "seed": int,
    "subseed": int,
    "subseed_strength": float,
    "seed_resize_from_h": int,
    "seed_resize_from_w": int,
    "sampler_name": str,
    "sampler_index": str,
    "scheduler": str,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "clip_skip": int,
    "do_not_save_samples": lambda text: text.lower() in ("1", "true", "yes"),
    "do_not_save_grid": lambda text: text.lower() in ("1", "true", "yes"),
}


def parse_line(line: str) -> dict[str, Any]:
    """One line's settings: `{"prompt": line}` for a plain line, else its `--name value` options. Raises ValueError."""
    if not line.lstrip().startswith("--"):
        return {"prompt": line.strip()}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot split the line into options: {exc}") from exc
    settings: dict[str, Any] = {}
    index = 0
    while index < len(words):
        word = words[index]
        if not word.startswith("--"):
            raise ValueError(f"expected an option (--name), got {word!r}")
        name = word[2:]
        if name not in LINE_OPTIONS:
            raise ValueError(f"unknown option --{name}; known: {', '.join('--' + n for n in LINE_OPTIONS)}")
        if index + 1 >= len(words):
            raise ValueError(f"--{name} has no value")
        value = words[index + 1]
        try:
            settings["sampler_name" if name == "sampler_index" else name] = LINE_OPTIONS[name](value)
        except ValueError:
            raise ValueError(f"--{name} {value!r} is not a valid value") from None
        index += 2
    return settings


class Script(scripts.Script):
    """Prompts from file or textbox (see the module docstring)."""

    def title(self) -> str:
        return "Prompts from file or textbox"

    def ui(self, is_img2img: bool) -> list[Any]:
        checkbox_iterate = gr.Checkbox(False, label="Iterate seed every line", elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(False, label="Use same random seed for all lines",
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], value="start", label="Insert prompts at the",
                                   elem_id=self.elem_id("prompt_position"))
        prompt_txt = gr.Textbox("", label="List of prompt inputs", lines=2, elem_id=self.elem_id("prompt_txt"))
        upload = gr.File(label="Upload prompt inputs", type="binary", file_types=[".txt"],
                         elem_id=self.elem_id("file"))
        upload.change(lambda data: (data or b"").decode("utf8", errors="replace").replace("\r", ""),
                      inputs=[upload], outputs=[prompt_txt], show_progress="hidden", api_visibility="undocumented")
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt]

    def run(self, p: Any, checkbox_iterate: bool = False, checkbox_iterate_batch: bool = False,
            prompt_position: str = "start", prompt_txt: str = "", *_: Any) -> Any:
        lines = [line for line in str(prompt_txt or "").splitlines() if line.strip()]
        if not lines:
            raise ProcessingError("Prompts from file: the list of prompts is empty")
        jobs = []
        for number, line in enumerate(lines, start=1):
            try:
                jobs.append(parse_line(line))
            except ValueError as exc:
                raise ProcessingError(f"Prompts from file: line {number}: {exc}") from exc
        webui = self.webui
        if checkbox_iterate or checkbox_iterate_batch:
            p.seed = processing.fixed_seed(p.seed)
        cells = []
        for number, settings in enumerate(jobs, start=1):
            cell = scripts.request_copy(p)
            for name, value in settings.items():
                setattr(cell, name, value)
            for field, base in (("prompt", p.prompt), ("negative_prompt", p.negative_prompt)):
                if field in settings and base:
                    own = settings[field]
                    setattr(cell, field, f"{own} {base}" if prompt_position == "start" else f"{base} {own}")
            if checkbox_iterate and "seed" not in settings:
                cell.seed = p.seed + (number - 1) * cell.batch_size * cell.n_iter
            try:
                cell.validate(webui)
            except ProcessingError as exc:
                raise ProcessingError(f"Prompts from file: line {number}: {exc}") from exc
            cells.append(cell)
        results = []
        with webui.state.outer_job("Prompts from file", len(cells)):
            for number, cell in enumerate(cells, start=1):
                if webui.state.interrupted:
                    break
                webui.state.outer_text = f"Prompts from file: line {number} of {len(cells)}"
                results.append(processing.process_images(webui, cell))
        if not results:
            raise ProcessingError("Prompts from file: interrupted before the first line")
        first = results[0]
        return type(first)(**{**vars(first),
                              "images": [image for r in results for image in r.images],
                              "infotexts": [text for r in results for text in r.infotexts],
                              "all_prompts": [text for r in results for text in r.all_prompts],
                              "all_negative_prompts": [text for r in results for text in r.all_negative_prompts],
                              "all_seeds": [seed for r in results for seed in r.all_seeds],
                              "all_subseeds": [seed for r in results for seed in r.all_subseeds],
                              "comments": list(dict.fromkeys(c for r in results for c in r.comments)),
                              "interrupted": any(r.interrupted for r in results) or len(results) < len(cells),
                              "saved_paths": [path for r in results for path in r.saved_paths]})
