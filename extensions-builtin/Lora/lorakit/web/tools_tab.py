"""The "LoRA tools" tab: extract a LoRA from two checkpoints, combine LoRAs into one file, merge LoRAs into a
checkpoint, from the browser. Each action is a plain function of the WebUI object (tested without a browser); the
tab wires them to Gradio with progress bars that follow the tools' tqdm bars.

Outputs go into the WebUI's own folders (LoRAs into the Lora folder, checkpoints into the checkpoint folder) under a
file name the user types, which may not contain a path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from modules.extra_networks import parse_prompt

from ..engine.engine import LoraEngine, NetworkRequest
from ..errors import LoraError
from ..formats.blocks import BlockLayout
from ..prompt.tags import parse_tag
from ..tools import extract_combine
from ..tools.merge import check_output, load_model, merge

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.host import WebUI

NAME_RE = re.compile(r"^[\w][\w .+-]{0,120}$")


class ToolInputError(LoraError):
    """A value typed into the tab that cannot be used; the message says which."""


def output_path(folder: Path, name: str, suffix: str = ".safetensors") -> Path:
    """`folder/name.safetensors` for a plain file name; anything path-like is refused."""
    stem = name.strip().removesuffix(suffix)
    if not NAME_RE.match(stem) or stem in (".", ".."):
        raise ToolInputError(f"output name {name!r} must be a plain file name (letters, digits, space, . _ + -)")
    return folder / f"{stem}{suffix}"


def _checkpoint(webui: WebUI, title: str) -> Path:
    info = webui.models.find(title) if title else None
    if info is None:
        raise ToolInputError(f"checkpoint not found: {title!r}")
    return Path(info.path)


def run_extract(webui: WebUI, base: str, tuned: str, name: str, rank: int, energy: float, conv: bool) -> str:
    """Extract `tuned - base` into the Lora folder; `energy` > 0 chooses ranks by energy, else `rank` is used."""
    out = output_path(webui.paths.lora_dir, name)
    check_output(out, False, _checkpoint(webui, base), _checkpoint(webui, tuned))
    report = extract_combine.extract(load_model(_checkpoint(webui, base)), load_model(_checkpoint(webui, tuned)), out,
                                rank=None if energy else int(rank), energy=energy or None, conv=conv)
    webui.services.get("lora", LoraEngine).registry.refresh()
    return f"Wrote {out.name}: {report.summary()}"


def _requests(prompt: str, blocks: BlockLayout) -> tuple[list[NetworkRequest], list[str]]:
    """The prompt's tags as requests on a model of layout `blocks`, and the notices about them."""
    _, data = parse_prompt(prompt)
    params = data.get("lora", []) + data.get("lyco", [])
    if not params:
        raise ToolInputError("write the LoRAs to use as tags, e.g. <lora:a:0.5> <lora:b:1>")
    tags = [parse_tag(p) for p in params]
    return [tag.request(blocks) for tag in tags], [notice for tag in tags for notice in tag.notices(blocks)]


def run_combine(webui: WebUI, prompt: str, name: str, rank: int) -> str:
    """Combine the tagged LoRAs (against the loaded model) into one file in the Lora folder."""
    out = output_path(webui.paths.lora_dir, name)
    check_output(out, False)
    engine = webui.services.get("lora", LoraEngine)
    with webui.queue_lock:  # the engine's model is the one generations use: nothing else may patch it meanwhile
        model = webui.models.get()
        if engine.model is not model:
            engine.set_model(model)
        requests, notices = _requests(prompt, BlockLayout.of_model(model))
        report = extract_combine.combine(engine, requests, out, int(rank) or None)
    engine.registry.refresh()
    return f"Wrote {out.name}: {report.summary()}" + "".join(f"\nnotice: {n}" for n in notices)


def run_merge(webui: WebUI, prompt: str, name: str) -> str:
    """Merge the tagged LoRAs into a copy of the loaded checkpoint, written into the checkpoint folder."""
    current = webui.models.get().checkpoint
    source = Path(current.path)
    out = output_path(webui.paths.ckpt_dir, name, "" if current.format == "diffusers" else source.suffix)
    result = merge(source, [webui.paths.lora_dir, webui.paths.lyco_dir], prompt, out,
                   models_dir=Path(webui.paths.models_dir))
    webui.models.list_checkpoints()
    return f"Wrote {out.name}" + "".join(f"\nwarning: {w}" for w in result.warnings)


def _safe(action: Callable[..., str], *args: object) -> str:
    """Run a tool action; errors become the message shown under the button."""
    try:
        return action(*args)
    except (LoraError, OSError) as exc:
        return f"Error: {exc}"


def create_tab(webui: WebUI) -> tuple[object, str, str]:
    """The Gradio block for the `ui_tabs` callback: (block, "LoRA tools", "lora_tools")."""
    import gradio as gr  # noqa: PLC0415

    titles = [info.title for info in webui.models.list_checkpoints()]
    with gr.Blocks(analytics_enabled=False) as block:
        with gr.Tab("Extract"):
            base = gr.Dropdown(titles, label="Base checkpoint", elem_id="lora_tools_extract_base")
            tuned = gr.Dropdown(titles, label="Fine-tuned checkpoint", elem_id="lora_tools_extract_tuned")
            with gr.Row():
                rank = gr.Number(32, label="Rank", precision=0, minimum=1)
                energy = gr.Number(0, label="Energy (0-1; 0 = fixed rank)", minimum=0, maximum=1)
                conv = gr.Checkbox(False, label="Include k x k convolutions (LoCon)")
            name = gr.Textbox("extracted", label="Output LoRA name")
            result = gr.Textbox(label="Result", interactive=False)
            gr.Button("Extract", variant="primary").click(
                lambda *a, progress=gr.Progress(track_tqdm=True): _safe(run_extract, webui, *a),
                inputs=[base, tuned, name, rank, energy, conv], outputs=[result])
        with gr.Tab("Combine"):
            prompt = gr.Textbox(label="LoRAs to combine", placeholder="<lora:a:0.5> <lora:b:1>")
            with gr.Row():
                name2 = gr.Textbox("combined", label="Output LoRA name")
                rank2 = gr.Number(0, label="Rank (0 = exact)", precision=0, minimum=0)
            result2 = gr.Textbox(label="Result", interactive=False)
            gr.Button("Combine", variant="primary").click(
                lambda *a, progress=gr.Progress(track_tqdm=True): _safe(run_combine, webui, *a),
                inputs=[prompt, name2, rank2], outputs=[result2])
        with gr.Tab("Merge into checkpoint"):
            prompt3 = gr.Textbox(label="LoRAs to merge into the loaded checkpoint", placeholder="<lora:a:0.7>")
            name3 = gr.Textbox("merged", label="Output checkpoint name")
            result3 = gr.Textbox(label="Result", interactive=False)
            gr.Button("Merge", variant="primary").click(
                lambda *a, progress=gr.Progress(track_tqdm=True): _safe(run_merge, webui, *a),
                inputs=[prompt3, name3], outputs=[result3])
    return block, "LoRA tools", "lora_tools"
