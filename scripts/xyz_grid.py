"""The "X/Y/Z plot" script: one generation per combination of up to three axes' values, in one labelled grid.

Arguments (A1111's positional order, which API clients send as `script_args`):
    x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values, z_values_dropdown,
    draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary_seeds_x, vary_seeds_y, vary_seeds_z,
    margin_size, csv_mode
An axis type is an index into this tab's axis list (A1111's order, so clients' numbers mean the same axes: 1 Seed,
4 Steps, 6 CFG Scale, 7 Prompt S/R, ...) or its label. A1111 axes this WebUI has no setting for (sigma churn, VAE,
face restore, ...) keep their place in the list and are refused with a message naming them. After A1111's list come
the LoRA-aware axes:
* "Lora weight": the weight of one `<lora:...>` tag (both parts); "Lora TE weight" / "Lora UNet weight": `te=` /
  `unet=`; "Lora block preset": `lbw=` presets or quoted vectors (`"1,0,0,..."`); "Lora start step" / "Lora stop
  step": `start=` / `stop=`;
* "Lora file": the tag's LoRA swapped for each file listed, or for every file of a Lora sub-folder (`epochs/`, e.g.
  every epoch of a training run).
Values may start with `name:` to pick the LoRA (`my_lora: 0-1 [5]`); otherwise the first LoRA tag of the prompt is
changed. A named LoRA that is not in the prompt is added to it (`<lora:name:1>`), which the Lora card's "compare"
action relies on.

Value syntax (A1111's): comma-separated (CSV quoting for values with commas), integer ranges `1-5`, `1-9 (+2)`,
`1-10 [4]` (4 values), float ranges `0.2-1.2 [6]`, `0-1 (+0.25)`; Prompt S/R: the first value is searched for in the
prompts and replaced by each value in turn; Prompt order: every permutation of the listed words.

Order of work: the cells are generated axis by axis with the costliest axis outermost (checkpoint > Lora file >
other LoRA axes > the rest, as A1111's `cost`), in a snake order (the inner axes run backwards on every other pass of
an outer one), so neighbouring cells differ in exactly one axis: between two cells of a "Lora weight" x seed grid the
patcher rewrites nothing, or only the one LoRA's layers with a new multiplier. Every cell is validated before the
first is generated. Results: the grid (with axis labels when "Draw legend"), then one sub-grid per Z value when
"Include Sub Grids", then every cell's image when "Include Sub Images"; each cell's image is saved (when saving is
on) with its own infotext, and the grid's infotext names the axes (`Script`, `X Type`, `X Values`, ...).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules import image_grid, processing, sampler_table, scripts
from modules.processing import ProcessingError

log = logging.getLogger(__name__)

MAX_GRID_MEGAPIXELS = 200  # A1111's img_max_size_mp default
COST_CHECKPOINT = 1.0
COST_LORA_FILE = 0.9
COST_LORA = 0.8


# ---------------------------------------------------------------------------------------------- values


RE_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_RANGE_FLOAT = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)\s*\[(\d+)\s*\]\s*")
RE_RANGE_COUNT_FLOAT = re.compile(r"\s*([+-]?\s*\d+(?:\.\d*)?)\s*-\s*([+-]?\s*\d+(?:\.\d*)?)\s*\[(\d+)\s*\]\s*")
RE_TARGET = re.compile(r"^\s*([^\s:,\"'<>][^:,\"<>]*?)\s*:\s*(.*)$", re.S)


def split_values(text: str) -> list[str]:
    """Comma-separated values with CSV quoting, stripped (empty ones kept: Prompt S/R may replace with nothing)."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [value.strip() for row in rows for value in row]


def _number(text: str) -> float:
    return float(text.replace(" ", ""))


def expand_ints(values: list[str]) -> list[int]:
    """Integers, with `a-b`, `a-b (+s)` and `a-b [n]` ranges expanded (A1111's rules: ends included)."""
    out: list[int] = []
    for value in values:
        count = RE_RANGE_COUNT.fullmatch(value)
        step = RE_RANGE.fullmatch(value)
        if count:
            start, end, num = int(_number(count.group(1))), int(_number(count.group(2))), int(count.group(3))
            out += [int(x) for x in np.linspace(start, end, num).tolist()]
        elif step:
            start, end = int(_number(step.group(1))), int(_number(step.group(2)))
            by = int(step.group(3)) if step.group(3) else 1
            if by == 0:
                raise ValueError(f"range {value!r} has a step of 0")
            out += list(range(start, end + (1 if by > 0 else -1), by))
        else:
            out.append(int(value))
    return out


def expand_floats(values: list[str]) -> list[float]:
    """Numbers, with `a-b [n]` (n values, ends included) and `a-b (+s)` ranges expanded."""
    out: list[float] = []
    for value in values:
        count = RE_RANGE_COUNT_FLOAT.fullmatch(value)
        step = RE_RANGE_FLOAT.fullmatch(value)
        if count:
            out += [round(x, 8) for x in np.linspace(_number(count.group(1)), _number(count.group(2)),
                                                    int(count.group(3))).tolist()]
        elif step:
            start, end = _number(step.group(1)), _number(step.group(2))
            by = float(step.group(3)) if step.group(3) else 1.0
            if by == 0:
                raise ValueError(f"range {value!r} has a step of 0")
            n = int(math.floor((end - start) / by + 1e-9)) + 1
            out += [round(start + i * by, 8) for i in range(max(n, 0))]
        else:
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"{value!r} is not a finite number")
            out.append(number)
    return out


@dataclass(frozen=True)
class LoraValue:
    """A value of a LoRA axis: which LoRA (None: the prompt's first) and the value."""

    target: str | None
    value: Any

    def __str__(self) -> str:
        return f"{self.target}: {self.value}" if self.target else str(self.value)


# ---------------------------------------------------------------------------------------------- axes


@dataclass
class AxisContext:
    """What axes may read: the WebUI object (models, options, the Lora engine)."""

    webui: Any

    def lora_engine(self) -> Any:
        """The Lora extension's engine; ProcessingError when the extension is not loaded."""
        if "lora" not in self.webui.services:
            raise ProcessingError("X/Y/Z plot: LoRA axes need the Lora extension, which is not loaded")
        return self.webui.services["lora"]


@dataclass
class AxisOption:
    """One axis type. `kind`: "int", "float", "str", "permutations" or "lora:<change>" (see the module docstring)."""

    label: str
    kind: str
    apply: Callable[[Any, Any, list[Any]], None] | None  # (p, value, all values); None: not supported here
    format_value: Callable[[AxisOption, Any], str] | None = None
    confirm: Callable[[AxisContext, list[Any]], None] | None = None
    cost: float = 0.0
    choices: Callable[[AxisContext], list[str]] | None = None
    tab: str | None = None  # "txt2img" / "img2img" for axes of one tab only
    before_cell: Callable[[AxisContext, Any], None] | None = None  # e.g. load the cell's checkpoint
    unsupported: str = ""  # why this WebUI cannot vary it

    def label_of(self, value: Any) -> str:
        """The legend text of one value."""
        if self.format_value is not None:
            return self.format_value(self, value)
        if isinstance(value, float):
            value = round(value, 8)
        return f"{self.label}: {value}"

    def cost_of(self, values: list[Any]) -> float:
        """The axis' cost for these values (a Prompt S/R over lora tags changes LoRAs, like a LoRA axis)."""
        if self.kind == "str" and self.label == "Prompt S/R" and any("<" in str(v) for v in values):
            return COST_LORA
        return self.cost


def _set(name: str) -> Callable[[Any, Any, list[Any]], None]:
    def apply(p: Any, value: Any, values: list[Any]) -> None:
        setattr(p, name, value)

    return apply


def _override(option: str) -> Callable[[Any, Any, list[Any]], None]:
    def apply(p: Any, value: Any, values: list[Any]) -> None:
        p.override_settings[option] = value

    return apply


def _prompt_fields(p: Any) -> list[str]:
    return [name for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
            if isinstance(getattr(p, name, None), str)]


def apply_prompt_sr(p: Any, value: str, values: list[str]) -> None:
    """Replace the first value with `value` in every prompt of `p` (A1111's Prompt S/R)."""
    search = values[0]
    fields = _prompt_fields(p)
    if not any(search in getattr(p, name) for name in fields):
        raise ProcessingError(f"X/Y/Z plot: Prompt S/R did not find {search!r} in the prompt or negative prompt")
    for name in fields:
        setattr(p, name, getattr(p, name).replace(search, value))


def apply_prompt_order(p: Any, value: tuple[str, ...], values: list[Any]) -> None:
    """Put the listed words in `value`'s order, each where one of them stood (A1111's Prompt order)."""
    positions = sorted((p.prompt.find(word), word) for word in value)
    if any(index < 0 for index, _ in positions):
        missing = [word for index, word in positions if index < 0]
        raise ProcessingError(f"X/Y/Z plot: Prompt order did not find {', '.join(map(repr, missing))} in the prompt")
    parts, rest = [], p.prompt
    for _, word in positions:
        at = rest.find(word)
        parts.append(rest[:at])
        rest = rest[at + len(word):]
    p.prompt = "".join(part + word for part, word in zip(parts, value)) + rest


def confirm_samplers(ctx: AxisContext, values: list[str]) -> None:
    for value in values:
        if sampler_table.resolve_sampler(value, None)[0] is None:
            raise ProcessingError(f"X/Y/Z plot: unknown sampler {value!r}; valid: {', '.join(sampler_table.sampler_names())}")


def confirm_schedules(ctx: AxisContext, values: list[str]) -> None:
    for value in values:
        if sampler_table.find_schedule_type(value) is None:
            raise ProcessingError(f"X/Y/Z plot: unknown schedule type {value!r}; valid: "
                                  f"{', '.join(sampler_table.schedule_type_names())}")


def confirm_upscalers(ctx: AxisContext, values: list[str]) -> None:
    for value in values:
        if value not in processing.upscaler_names():
            raise ProcessingError(f"X/Y/Z plot: unknown hires upscaler {value!r}; valid: "
                                  f"{', '.join(processing.upscaler_names())}")


def confirm_checkpoints(ctx: AxisContext, values: list[str]) -> None:
    for value in values:
        if ctx.webui.models.find(value) is None:
            raise ProcessingError(f"X/Y/Z plot: unknown checkpoint {value!r}")


def load_checkpoint(ctx: AxisContext, value: str) -> None:
    """Make the cell's checkpoint the loaded one (the caller holds the queue lock)."""
    manager = ctx.webui.models
    info = manager.find(value)
    current = manager.current
    if current is None or current.checkpoint.title != info.title:
        manager.load(info)


def checkpoint_titles(ctx: AxisContext) -> list[str]:
    return [info.title for info in ctx.webui.models.list_checkpoints()]


def format_plain(opt: AxisOption, value: Any) -> str:
    return str(round(value, 8) if isinstance(value, float) else value)


def format_join(opt: AxisOption, value: Any) -> str:
    return ", ".join(value)


def format_nothing(opt: AxisOption, value: Any) -> str:
    return ""


def format_checkpoint(opt: AxisOption, value: Any) -> str:
    return Path(str(value).split(" [")[0]).stem


# ---- LoRA axes (the tag rewriting lives in the Lora extension: lorakit.prompt.tag_edit)


def _tag_edit() -> Any:
    try:
        from lorakit.prompt import tag_edit  # noqa: PLC0415 - offered by the Lora extension's folder
    except ImportError as exc:
        raise ProcessingError("X/Y/Z plot: LoRA axes need the Lora extension, which is not loaded") from exc
    return tag_edit


def lora_apply(change: str) -> Callable[[Any, LoraValue, list[Any]], None]:
    """Rewrite the target LoRA's tag in the prompt (and in a separate hires prompt that has it)."""
    def apply(p: Any, value: LoraValue, values: list[Any]) -> None:
        tag_edit = _tag_edit()
        from lorakit.prompt.tags import TagError  # noqa: PLC0415

        try:
            p.prompt = tag_edit.set_tag_value(p.prompt, value.target, change, value.value)
            hr = getattr(p, "hr_prompt", "")
            if hr and (value.target in tag_edit.tag_names(hr) or (value.target is None and tag_edit.tag_names(hr))):
                p.hr_prompt = tag_edit.set_tag_value(hr, value.target, change, value.value)
        except TagError as exc:
            raise ProcessingError(f"X/Y/Z plot: {exc}") from exc

    return apply


def format_lora(opt: AxisOption, value: LoraValue) -> str:
    shown = format_plain(opt, value.value)
    if opt.kind == "lora:name":
        return shown
    name = f"{value.target} " if value.target else ""
    return f"{name}{opt.label.removeprefix('Lora ')}: {shown}"


def confirm_lora_files(ctx: AxisContext, values: list[LoraValue]) -> None:
    registry = ctx.lora_engine().registry
    missing = [v.value for v in values if registry.find(v.value) is None]
    if missing:
        raise ProcessingError(f"X/Y/Z plot: Lora file(s) not found: {', '.join(missing)}")


def _block_layout(ctx: AxisContext) -> Any:
    """The loaded model's block layout (`lorakit.formats.blocks.BlockLayout`; SD1's when no model is loaded)."""
    from lorakit.formats.blocks import BlockLayout  # noqa: PLC0415

    model = ctx.webui.models.current
    return BlockLayout.of_model(model) if model is not None else BlockLayout("SD1")


def confirm_lora_blocks(ctx: AxisContext, values: list[LoraValue]) -> None:
    from lorakit.prompt import block_weights  # noqa: PLC0415

    blocks = _block_layout(ctx)
    presets = block_weights.parse_presets(str(ctx.webui.options.get("lora_lbw_presets") or ""))
    for value in values:
        try:
            block_weights.lbw_values(str(value.value), blocks, presets)
        except block_weights.BlockWeightError as exc:
            raise ProcessingError(f"X/Y/Z plot: Lora block preset: {exc}") from exc


def lora_file_choices(ctx: AxisContext) -> list[str]:
    return [entry.relative_name for entry in ctx.lora_engine().registry.entries()]


def lora_block_choices(ctx: AxisContext) -> list[str]:
    from lorakit.prompt import block_weights  # noqa: PLC0415

    user = block_weights.parse_presets(str(ctx.webui.options.get("lora_lbw_presets") or ""))
    return [*block_weights.presets(_block_layout(ctx)), *user]


def _unsupported(label: str, tab: str | None = None, why: str = "") -> AxisOption:
    return AxisOption(label, "str", None, tab=tab, unsupported=why or "this WebUI has no such setting")


def axis_options() -> list[AxisOption]:
    """Every axis type, in A1111's order (so index numbers match) with the LoRA axes after it."""
    return [
        AxisOption("Nothing", "str", lambda p, v, vs: None, format_value=format_nothing),
        AxisOption("Seed", "int", _set("seed")),
        AxisOption("Var. seed", "int", _set("subseed")),
        AxisOption("Var. strength", "float", _set("subseed_strength")),
        AxisOption("Steps", "int", _set("steps")),
        AxisOption("Hires steps", "int", _set("hr_second_pass_steps"), tab="txt2img"),
        AxisOption("CFG Scale", "float", _set("cfg_scale")),
        _unsupported("Image CFG Scale", tab="img2img", why="instruct-pix2pix models are not supported"),
        AxisOption("Prompt S/R", "str", apply_prompt_sr, format_value=format_plain),
        AxisOption("Prompt order", "permutations", apply_prompt_order, format_value=format_join),
        AxisOption("Sampler", "str", _set("sampler_name"), format_value=format_plain, confirm=confirm_samplers,
                   choices=lambda ctx: sampler_table.sampler_names(), tab="txt2img"),
        AxisOption("Hires sampler", "str", _set("hr_sampler_name"), confirm=confirm_samplers,
                   choices=lambda ctx: sampler_table.sampler_names(), tab="txt2img"),
        AxisOption("Sampler", "str", _set("sampler_name"), format_value=format_plain, confirm=confirm_samplers,
                   choices=lambda ctx: sampler_table.sampler_names(), tab="img2img"),
        AxisOption("Checkpoint name", "str", lambda p, v, vs: None, format_value=format_checkpoint,
                   confirm=confirm_checkpoints, cost=COST_CHECKPOINT, choices=checkpoint_titles,
                   before_cell=load_checkpoint),
        _unsupported("Negative Guidance minimum sigma"),
        _unsupported("Sigma Churn"),
        _unsupported("Sigma min"),
        _unsupported("Sigma max"),
        _unsupported("Sigma noise"),
        AxisOption("Schedule type", "str", _set("scheduler"), confirm=confirm_schedules,
                   choices=lambda ctx: sampler_table.schedule_type_names()),
        _unsupported("Schedule min sigma"),
        _unsupported("Schedule max sigma"),
        _unsupported("Schedule rho"),
        AxisOption("Eta", "float", _override("eta_ancestral")),
        AxisOption("Clip skip", "int", _set("clip_skip")),
        AxisOption("Denoising", "float", _set("denoising_strength")),
        _unsupported("Initial noise multiplier"),
        _unsupported("Extra noise"),
        AxisOption("Hires upscaler", "str", _set("hr_upscaler"), confirm=confirm_upscalers,
                   choices=lambda ctx: processing.upscaler_names(), tab="txt2img"),
        _unsupported("Cond. Image Mask Weight", tab="img2img"),
        _unsupported("VAE", why="separate VAE files are not supported (the checkpoint's VAE is used)"),
        _unsupported("Styles", why="prompt styles are not supported"),
        _unsupported("UniPC Order"),
        _unsupported("Face restore", why="face restoration is not supported"),
        _unsupported("Token merging ratio"),
        _unsupported("Token merging ratio high-res"),
        _unsupported("Always discard next-to-last sigma"),
        _unsupported("SGM noise multiplier"),
        _unsupported("Refiner checkpoint", why="refiners are not supported"),
        _unsupported("Refiner switch at", why="refiners are not supported"),
        _unsupported("RNG source", why="noise is always drawn on the CPU"),
        # ---- LoRA-aware axes (not in A1111)
        AxisOption("Lora weight", "lora:weight", lora_apply("weight"), format_value=format_lora, cost=COST_LORA),
        AxisOption("Lora file", "lora:name", lora_apply("name"), format_value=format_lora, cost=COST_LORA_FILE,
                   confirm=confirm_lora_files, choices=lora_file_choices),
        AxisOption("Lora block preset", "lora:lbw", lora_apply("lbw"), format_value=format_lora, cost=COST_LORA,
                   confirm=confirm_lora_blocks, choices=lora_block_choices),
        AxisOption("Lora TE weight", "lora:te", lora_apply("te"), format_value=format_lora, cost=COST_LORA),
        AxisOption("Lora UNet weight", "lora:unet", lora_apply("unet"), format_value=format_lora, cost=COST_LORA),
        AxisOption("Lora start step", "lora:start", lora_apply("start"), format_value=format_lora, cost=COST_LORA),
        AxisOption("Lora stop step", "lora:stop", lora_apply("stop"), format_value=format_lora, cost=COST_LORA),
    ]


def tab_axes(is_img2img: bool) -> list[AxisOption]:
    """The axes of one tab, in order (the indices API clients send)."""
    tab = "img2img" if is_img2img else "txt2img"
    return [axis for axis in axis_options() if axis.tab in (None, tab)]


# ---------------------------------------------------------------------------------------------- parsing


def expand_lora_files(ctx: AxisContext, names: list[str]) -> list[str]:
    """Names, with a Lora sub-folder (`folder/` or a folder name) replaced by its files in natural order."""
    registry = ctx.lora_engine().registry
    registry.refresh()  # files added since the last scan (a training run's new epochs)
    entries = registry.entries()
    out: list[str] = []
    for name in names:
        folder = name.strip().rstrip("/")
        inside = [e.relative_name for e in entries if e.relative_name.startswith(folder + "/")]
        if (name.endswith("/") or registry.find(name) is None) and inside:
            out += inside
        else:
            out.append(name)
    return out


def parse_axis(ctx: AxisContext, opt: AxisOption, text: str, dropdown: Sequence[Any] | None,
               csv_mode: bool) -> list[Any]:
    """An axis' values from its text (or its dropdown selection for axes with choices); ProcessingError when bad."""
    if opt.label == "Nothing":
        return [None]
    if opt.unsupported:
        raise ProcessingError(f"X/Y/Z plot: axis {opt.label!r} is not supported: {opt.unsupported}")
    target = None
    text = str(text or "")
    if opt.kind.startswith("lora:"):
        match = RE_TARGET.match(text)
        if match and not re.fullmatch(r"[+-]?\d+(\.\d*)?", match.group(1).strip()):
            target, text = match.group(1).strip(), match.group(2)
    if opt.choices is not None and not csv_mode and dropdown:
        raw = [str(v) for v in dropdown]
    else:
        raw = split_values(text)
    if opt.kind not in ("str", "permutations"):
        raw = [value for value in raw if value]
    if not raw:
        raise ProcessingError(f"X/Y/Z plot: axis {opt.label!r} has no values")
    kind = opt.kind.removeprefix("lora:")
    try:
        if opt.kind == "int" or kind in ("start", "stop") and all(RE_RANGE.fullmatch(v) or v.isdigit() for v in raw):
            values: list[Any] = expand_ints(raw)
        elif opt.kind == "float" or kind in ("weight", "te", "unet"):
            values = expand_floats(raw)
        elif opt.kind == "permutations":
            values = list(permutations(raw))
        else:
            values = raw
    except ValueError as exc:
        raise ProcessingError(f"X/Y/Z plot: axis {opt.label!r}: {exc}") from exc
    if kind == "name":
        values = expand_lora_files(ctx, values)
    if opt.kind.startswith("lora:"):
        values = [LoraValue(target, v) for v in values]
    if opt.confirm is not None:
        opt.confirm(ctx, values)
    return values


def match_lora_target(ctx: AxisContext, prompt: str, values: list[Any]) -> list[Any]:
    """LoRA axis values naming a LoRA that the prompt's tag spells another way (alias vs file name) are pointed at
    that tag, so it is changed instead of a second tag being added."""
    if not values or not isinstance(values[0], LoraValue) or values[0].target is None:
        return values
    target = values[0].target
    names = _tag_edit().tag_names(prompt)
    if target in names:
        return values
    registry = ctx.lora_engine().registry
    wanted = registry.find(target)
    for name in names:
        entry = registry.find(name)
        if wanted is not None and entry is not None and entry.filename == wanted.filename:
            return [LoraValue(name, v.value) for v in values]
    return values


def resolve_axis(axes: list[AxisOption], value: Any) -> AxisOption:
    """An axis by index (A1111 clients) or label; ProcessingError naming the valid ones otherwise."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if 0 <= index < len(axes):
            return axes[index]
        raise ProcessingError(f"X/Y/Z plot: axis type {index} is out of range (0..{len(axes) - 1})")
    for axis in axes:
        if axis.label.lower() == str(value).strip().lower():
            return axis
    raise ProcessingError(f"X/Y/Z plot: unknown axis type {value!r}; known: {', '.join(a.label for a in axes)}")


def snake_order(sizes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every index tuple of a grid with these axis sizes (outermost first) such that neighbours differ in one axis:
    the inner axes run backwards on every other pass of an outer one (reflected mixed-radix Gray code)."""
    if not sizes:
        return [()]
    inner = snake_order(sizes[1:])
    order: list[tuple[int, ...]] = []
    for i in range(sizes[0]):
        order += [(i, *rest) for rest in (inner if i % 2 == 0 else reversed(inner))]
    return order


def cell_order(counts: dict[str, int], costs: dict[str, float]) -> list[dict[str, int]]:
    """The order cells are generated in: the costliest axis outermost (ties: z, y, x, as A1111), snake order."""
    axes = sorted("zyx", key=lambda a: -costs[a])  # sorted() is stable: ties keep z, y, x
    return [dict(zip(axes, indices)) for indices in snake_order([counts[a] for a in axes])]


# ---------------------------------------------------------------------------------------------- the script


class Script(scripts.Script):
    """X/Y/Z plot (see the module docstring)."""

    def title(self) -> str:
        return "X/Y/Z plot"

    def ui(self, is_img2img: bool) -> list[Any]:
        axes = tab_axes(is_img2img)
        labels = [axis.label for axis in axes]
        components: list[Any] = []
        for axis_name, default in (("x", labels[1]), ("y", labels[0]), ("z", labels[0])):
            with gr.Row():
                axis_type = gr.Dropdown(labels, value=default, label=f"{axis_name.upper()} type", type="index",
                                        elem_id=self.elem_id(f"{axis_name}_type"), scale=1)
                values = gr.Textbox("", label=f"{axis_name.upper()} values", lines=1,
                                    elem_id=self.elem_id(f"{axis_name}_values"), scale=3)
                dropdown = gr.Dropdown(label=f"{axis_name.upper()} values", choices=[], value=[], multiselect=True,
                                       visible=False, elem_id=self.elem_id(f"{axis_name}_values_dropdown"), scale=3)
            axis_type.change(self._axis_changed, inputs=[axis_type], outputs=[dropdown], show_progress="hidden",
                             api_visibility="undocumented")
            components += [axis_type, values, dropdown]
        with gr.Row():
            draw_legend = gr.Checkbox(True, label="Draw legend", elem_id=self.elem_id("draw_legend"))
            include_lone_images = gr.Checkbox(False, label="Include Sub Images",
                                              elem_id=self.elem_id("include_lone_images"))
            include_sub_grids = gr.Checkbox(False, label="Include Sub Grids", elem_id=self.elem_id("include_sub_grids"))
            no_fixed_seeds = gr.Checkbox(False, label="Keep -1 for seeds", elem_id=self.elem_id("no_fixed_seeds"))
        with gr.Row():
            vary = [gr.Checkbox(False, label=f"Vary seeds for {a.upper()}", elem_id=self.elem_id(f"vary_seeds_{a}"))
                    for a in "xyz"]
            margin_size = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)",
                                    elem_id=self.elem_id("margin_size"))
            csv_mode = gr.Checkbox(False, label="Use text inputs instead of dropdowns", elem_id=self.elem_id("csv_mode"))
        return [*components, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, *vary, margin_size,
                csv_mode]

    def _axis_changed(self, index: Any) -> Any:
        axes = tab_axes(self.is_img2img)
        axis = axes[index] if isinstance(index, int) and 0 <= index < len(axes) else None
        if axis is None or axis.choices is None:
            return gr.update(visible=False, choices=[], value=[])
        try:
            choices = axis.choices(AxisContext(self.webui))
        except ProcessingError:
            choices = []
        return gr.update(visible=True, choices=choices, value=[])

    def presets(self, kind: str, value: str) -> dict[int, Any] | None:
        """"lora_compare": X = "Lora weight" of LoRA `value` at 0, 0.25, ... 1; no Y or Z axis."""
        if kind != "lora_compare":
            return None
        return {0: "Lora weight", 1: f"{value}: 0, 0.25, 0.5, 0.75, 1", 3: "Nothing", 4: "", 6: "Nothing", 7: "",
                9: True}

    def run(self, p: Any, x_type: Any = 1, x_values: str = "", x_values_dropdown: Any = None, y_type: Any = 0,
            y_values: str = "", y_values_dropdown: Any = None, z_type: Any = 0, z_values: str = "",
            z_values_dropdown: Any = None, draw_legend: bool = True, include_lone_images: bool = False,
            include_sub_grids: bool = False, no_fixed_seeds: bool = False, vary_seeds_x: bool = False,
            vary_seeds_y: bool = False, vary_seeds_z: bool = False, margin_size: int = 0,
            csv_mode: bool = False, *_: Any) -> Any:
        webui = self.webui
        ctx = AxisContext(webui)
        axes = tab_axes(self.is_img2img)
        if not no_fixed_seeds:
            p.seed = processing.fixed_seed(p.seed)
        opts = {"x": resolve_axis(axes, x_type), "y": resolve_axis(axes, y_type), "z": resolve_axis(axes, z_type)}
        texts = {"x": x_values, "y": y_values, "z": z_values}
        dropdowns = {"x": x_values_dropdown, "y": y_values_dropdown, "z": z_values_dropdown}
        values = {a: match_lora_target(ctx, p.prompt, parse_axis(ctx, opts[a], texts[a], dropdowns[a], bool(csv_mode)))
                  for a in "xyz"}
        if not no_fixed_seeds:
            for a in "xyz":
                if opts[a].label in ("Seed", "Var. seed"):
                    values[a] = [processing.fixed_seed(v) for v in values[a]]
        xs, ys, zs = values["x"], values["y"], values["z"]
        count = len(xs) * len(ys) * len(zs)
        megapixels = count * p.width * p.height * p.batch_size * p.n_iter / 1e6
        if megapixels > MAX_GRID_MEGAPIXELS:
            raise ProcessingError(f"X/Y/Z plot: the grid would be {megapixels:.0f} megapixels "
                                  f"(at most {MAX_GRID_MEGAPIXELS})")
        vary = {"x": vary_seeds_x, "y": vary_seeds_y, "z": vary_seeds_z}

        def make_cell(ix: int, iy: int, iz: int) -> Any:
            pc = scripts.request_copy(p)
            for a, i in (("x", ix), ("y", iy), ("z", iz)):
                opts[a].apply(pc, values[a][i], values[a])
            offset = (ix if vary["x"] else 0) + (iy * len(xs) if vary["y"] else 0) \
                + (iz * len(xs) * len(ys) if vary["z"] else 0)
            if offset and pc.seed != -1:
                pc.seed += offset
            return pc

        cells: dict[tuple[int, int, int], Any] = {}
        for iz in range(len(zs)):
            for iy in range(len(ys)):
                for ix in range(len(xs)):
                    pc = make_cell(ix, iy, iz)
                    try:
                        pc.validate(webui)
                    except ProcessingError as exc:
                        raise ProcessingError(f"X/Y/Z plot: cell {self._cell_name(opts, values, ix, iy, iz)}: {exc}") \
                            from exc
                    cells[(ix, iy, iz)] = pc
        costs = {a: opts[a].cost_of(values[a]) for a in "xyz"}
        order = cell_order({"x": len(xs), "y": len(ys), "z": len(zs)}, costs)
        log.info("X/Y/Z plot: %d cells (%d x %d x %d), axes %s / %s / %s", count, len(xs), len(ys), len(zs),
                 opts["x"].label, opts["y"].label, opts["z"].label)
        results: dict[tuple[int, int, int], Any] = {}
        first_cell_p: Any = None
        previous_checkpoint = webui.models.current.checkpoint.title if webui.models.current is not None else None
        state = webui.state
        try:
            with state.outer_job("X/Y/Z plot", count):
                for number, index in enumerate(order, start=1):
                    if state.interrupted:
                        break
                    key = (index["x"], index["y"], index["z"])
                    state.outer_text = f"X/Y/Z plot: cell {number} of {count}"
                    for a in "xyz":
                        if opts[a].before_cell is not None:
                            opts[a].before_cell(ctx, values[a][key["xyz".index(a)]])
                    pc = cells[key]
                    results[key] = processing.process_images(webui, pc)
                    if key == (0, 0, 0):
                        first_cell_p = pc
        finally:
            if previous_checkpoint is not None and any(opts[a].before_cell for a in "xyz"):
                load_checkpoint(ctx, previous_checkpoint)
        if not results:
            raise ProcessingError("X/Y/Z plot: interrupted before the first cell was generated")
        return self._assemble(p, opts, values, texts, results, first_cell_p, draw_legend, include_lone_images,
                              include_sub_grids, no_fixed_seeds, int(margin_size or 0))

    @staticmethod
    def _cell_name(opts: dict[str, AxisOption], values: dict[str, list[Any]], ix: int, iy: int, iz: int) -> str:
        parts = [opts[a].label_of(values[a][i]) for a, i in (("x", ix), ("y", iy), ("z", iz))
                 if opts[a].label != "Nothing"]
        return ", ".join(parts) or "1"

    def _assemble(self, p: Any, opts: dict[str, AxisOption], values: dict[str, list[Any]], texts: dict[str, str],
                  results: dict[tuple[int, int, int], Any], first_cell_p: Any, draw_legend: bool,
                  include_lone_images: bool, include_sub_grids: bool, no_fixed_seeds: bool, margin: int) -> Any:
        webui = self.webui
        xs, ys, zs = values["x"], values["y"], values["z"]
        template = next(iter(results.values()))
        blank_size = template.images[0].size if template.images else (p.width, p.height)
        cell_images, cell_infotexts, cell_seeds, cell_prompts, cell_negatives, comments, saved = [], [], [], [], [], [], []
        interrupted = False
        for iz in range(len(zs)):
            for iy in range(len(ys)):
                for ix in range(len(xs)):
                    result = results.get((ix, iy, iz))
                    if result is None or not result.images:
                        interrupted = True
                        cell_images.append(Image.new("RGB", blank_size, "black"))
                        cell_infotexts.append("")
                        cell_seeds.append(-1)
                        cell_prompts.append("")
                        cell_negatives.append("")
                        continue
                    if len(result.images) > 1:  # batch size / count > 1: the cell shows all its images
                        image, _ = image_grid.image_grid(result.images, cols=math.ceil(math.sqrt(len(result.images))))
                    else:
                        image = result.images[0]
                    interrupted = interrupted or result.interrupted
                    cell_images.append(image)
                    cell_infotexts.append(result.infotexts[0])
                    cell_seeds.append(result.seed)
                    cell_prompts.append(result.all_prompts[0])
                    cell_negatives.append(result.all_negative_prompts[0] if result.all_negative_prompts else "")
                    comments += [c for c in result.comments if c not in comments]
                    saved += result.saved_paths
        x_labels = [opts["x"].label_of(v) for v in xs] if draw_legend else []
        y_labels = [opts["y"].label_of(v) for v in ys] if draw_legend else []
        z_labels = [opts["z"].label_of(v) for v in zs] if draw_legend else []
        per_z = len(xs) * len(ys)
        sub_grids = [image_grid.annotated_grid(cell_images[i * per_z:(i + 1) * per_z], len(xs), x_labels, y_labels,
                                               margin)[0] for i in range(len(zs))]
        if len(zs) > 1:
            grid, _ = image_grid.annotated_grid(sub_grids, len(zs), z_labels, None, margin)
        else:
            grid = sub_grids[0]
        grid_infotext = self._grid_infotext(first_cell_p, opts, values, texts, no_fixed_seeds, webui) \
            if first_cell_p is not None else (cell_infotexts[0] if cell_infotexts else "")
        out_images, out_infotexts = [grid], [grid_infotext]
        out_seeds, out_prompts, out_negatives = [cell_seeds[0]], [cell_prompts[0]], [cell_negatives[0]]
        if include_sub_grids and len(zs) > 1:
            for i, sub in enumerate(sub_grids):
                out_images.append(sub)
                out_infotexts.append(cell_infotexts[i * per_z])
                out_seeds.append(cell_seeds[i * per_z])
                out_prompts.append(cell_prompts[i * per_z])
                out_negatives.append(cell_negatives[i * per_z])
        if include_lone_images:
            out_images += cell_images
            out_infotexts += cell_infotexts
            out_seeds += cell_seeds
            out_prompts += cell_prompts
            out_negatives += cell_negatives
        grid_path = scripts.save_grid(webui, p, grid, cell_seeds[0], grid_infotext)
        if grid_path is not None:
            saved.insert(0, grid_path)
        return dataclasses.replace(
            template, images=out_images, infotexts=out_infotexts, seed=cell_seeds[0], all_seeds=out_seeds,
            all_prompts=out_prompts, all_negative_prompts=out_negatives,
            all_subseeds=[template.subseed] * len(out_images), comments=comments, saved_paths=saved,
            interrupted=interrupted, index_of_first_image=len(out_images) - len(cell_images) if include_lone_images
            else 1)

    def _grid_infotext(self, pc: Any, opts: dict[str, AxisOption], values: dict[str, list[Any]],
                       texts: dict[str, str], no_fixed_seeds: bool, webui: Any) -> str:
        """The first cell's infotext plus `Script`, `X Type`, `X Values` (and `Fixed X Values` for seeds), ..."""
        extra = dict(pc.extra_generation_params)
        pc.extra_generation_params["Script"] = self.title()
        for a in "xyz":
            opt = opts[a]
            if opt.label == "Nothing":
                continue
            pc.extra_generation_params[f"{a.upper()} Type"] = opt.label
            pc.extra_generation_params[f"{a.upper()} Values"] = texts[a] or ", ".join(str(v) for v in values[a])
            if opt.label in ("Seed", "Var. seed") and not no_fixed_seeds:
                pc.extra_generation_params[f"Fixed {a.upper()} Values"] = ", ".join(str(v) for v in values[a])
        try:
            return processing.create_infotext(pc, webui, 0)
        finally:
            pc.extra_generation_params = extra
