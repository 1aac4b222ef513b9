"""The "Prompt matrix" script (A1111's): `a cat|in the snow|<lora:x:0.8>` makes every combination of the parts after
the first `|`, one image each, in a grid labelled by the parts each column and row adds.

Arguments (A1111's positional order): put_at_start, different_seeds, prompt_type ("positive"/"negative"),
variations_delimiter ("comma"/"space"), margin_size.
Combination k holds part i+1 when bit i of k is set; the grid has 2^(n // 2) rows (n = number of optional parts),
the low bits across, the high bits down. Each combination is its own generation (so a lora tag in one part applies
to exactly the images that hold it); seeds are all the same unless "different seeds" is on.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from modules import image_grid, processing, scripts
from modules.processing import ProcessingError

MAX_PARTS = 10  # 1024 images


def combinations(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the optional parts, the prompt of each combination in order)."""
    parts = prompt.split("|")
    base, optional = parts[0], [part.strip().strip(",").strip() for part in parts[1:]]
    prompts = []
    for number in range(2 ** len(optional)):
        chosen = [text for bit, text in enumerate(optional) if number & (1 << bit)]
        pieces = [*chosen, base.strip()] if put_at_start else [base.strip(), *chosen]
        prompts.append(delimiter.join(piece for piece in pieces if piece))
    return optional, prompts


def axis_labels(optional: list[str], bits: range) -> list[str]:
    """Labels of one grid axis: for each value of these bits, the parts it adds ("-" for none)."""
    labels = []
    for value in range(2 ** len(bits)):
        added = [optional[bit] for offset, bit in enumerate(bits) if value & (1 << offset)]
        labels.append(", ".join(added) or "-")
    return labels


class Script(scripts.Script):
    """Prompt matrix (see the module docstring)."""

    def title(self) -> str:
        return "Prompt matrix"

    def ui(self, is_img2img: bool) -> list[Any]:
        with gr.Row():
            put_at_start = gr.Checkbox(False, label="Put variable parts at start of prompt",
                                       elem_id=self.elem_id("put_at_start"))
            different_seeds = gr.Checkbox(False, label="Use different seed for each picture",
                                          elem_id=self.elem_id("different_seeds"))
        with gr.Row():
            prompt_type = gr.Radio(["positive", "negative"], value="positive", label="Select prompt",
                                   elem_id=self.elem_id("prompt_type"))
            delimiter = gr.Radio(["comma", "space"], value="comma", label="Select joining char",
                                 elem_id=self.elem_id("variations_delimiter"))
            margin_size = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)",
                                    elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, delimiter, margin_size]

    def run(self, p: Any, put_at_start: bool = False, different_seeds: bool = False, prompt_type: str = "positive",
            variations_delimiter: str = "comma", margin_size: int = 0, *_: Any) -> Any:
        if prompt_type not in ("positive", "negative"):
            raise ProcessingError(f"Prompt matrix: prompt_type must be 'positive' or 'negative', got {prompt_type!r}")
        field = "prompt" if prompt_type == "positive" else "negative_prompt"
        delimiter = ", " if variations_delimiter == "comma" else " "
        optional, prompts = combinations(getattr(p, field), bool(put_at_start), delimiter)
        if not optional:
            raise ProcessingError("Prompt matrix: the prompt has no `|`-separated parts to combine")
        if len(optional) > MAX_PARTS:
            raise ProcessingError(f"Prompt matrix: {len(optional)} optional parts make {len(prompts)} images "
                                  f"(at most {MAX_PARTS} parts)")
        webui = self.webui
        seed = processing.fixed_seed(p.seed)
        results = []
        with webui.state.outer_job("Prompt matrix", len(prompts)):
            for number, text in enumerate(prompts):
                if webui.state.interrupted:
                    break
                webui.state.outer_text = f"Prompt matrix: image {number + 1} of {len(prompts)}"
                cell = scripts.request_copy(p)
                setattr(cell, field, text)
                cell.seed = seed + (number if different_seeds else 0)
                cell.batch_size = cell.n_iter = 1
                results.append(processing.process_images(webui, cell))
        if not results:
            raise ProcessingError("Prompt matrix: interrupted before the first image")
        cells = [r.images[0] for r in results]
        cells += [cells[0].copy() for _ in range(len(prompts) - len(cells))]
        rows = 1 << (len(optional) // 2)
        cols = math.ceil(len(prompts) / rows)
        col_bits = range(0, int(math.log2(cols)))
        row_bits = range(int(math.log2(cols)), len(optional))
        grid, _ = image_grid.annotated_grid(cells, cols, axis_labels(optional, col_bits),
                                            axis_labels(optional, row_bits), int(margin_size or 0))
        first = results[0]
        grid_path = scripts.save_grid(webui, p, grid, first.seed, first.infotexts[0])
        comments = list(dict.fromkeys(c for r in results for c in r.comments))
        infotexts = [r.infotexts[0] for r in results]
        return type(first)(**{**vars(first), "images": [grid, *[r.images[0] for r in results]],
                              "infotexts": [infotexts[0], *infotexts],
                              "all_prompts": [first.all_prompts[0], *[r.all_prompts[0] for r in results]],
                              "all_negative_prompts": [first.all_negative_prompts[0],
                                                       *[r.all_negative_prompts[0] for r in results]],
                              "all_seeds": [first.seed, *[r.seed for r in results]],
                              "all_subseeds": [first.subseed] * (len(results) + 1),
                              "comments": comments, "index_of_first_image": 1,
                              "interrupted": any(r.interrupted for r in results) or len(results) < len(prompts),
                              "saved_paths": [*([grid_path] if grid_path else []),
                                              *[path for r in results for path in r.saved_paths]]})
