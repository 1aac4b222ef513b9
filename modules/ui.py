"""The Gradio 6 UI shell: the top bar (checkpoint picker and Forge's "VAE / Text Encoder" picker,
`modules.forge_modules`), txt2img (with Forge's "Distilled CFG Scale" slider, shown while a Flux dev model is
loaded), img2img, Extras, PNG Info and Settings tabs, extension tabs and assets. The img2img and Extras tabs live
in `modules.ui_img2img`, built with this module's builders (`build_generation_tab`, `build_sampling_settings`,
`wire_generation`).

A generation tab (txt2img; img2img calls the same functions with its own inputs) is built by
`build_generation_tab(webui, tabname, parameters)` in A1111's layout and wired by `wire_generation`; comments under
the image are styled as warnings or errors (`comment_severity`).

`mount_ui(app, webui)` builds the Blocks and mounts them at `/` of the FastAPI app, with the host's
`javascript/*.js` and `style.css` and every extension's `javascript/*.js` and `style.css` served under
`/webui-assets/` and linked from the page head. The progress bar and live preview (javascript/ui.js) poll
`GET /internal/progress`, which answers what `GET /sdapi/v1/progress` answers but is outside the `/sdapi/`
auth, as the UI is in A1111. Every action goes through the same operations as the API
(`modules.api.api`), so bad input shows a warning in the browser and never stops the server.

Extra-network pages (the contract the Lora card browser plugs into): an extension appends page objects to
`extra_network_pages(webui)` (the list `webui.extra_network_pages`) in `setup(webui)` or in its
`before_ui` callback, or returns them (one page or a list) from an `extra_networks_pages(webui)` callback.
A page has
    title: str                          tab label ("Lora")
    name: str                           short id used in elem_ids ("lora")
    create_html(tabname: str) -> str    the page's HTML for the tab `tabname` ("txt2img"); escaped by the page
    refresh() -> None                   rescan its files (the Refresh button calls it, then create_html again)
Each page becomes a tab beside the "Generation" tab of every generation tab (`build_generation_tab`), holding a
`gr.HTML` (elem_id `{tabname}_{name}_cards_html`, rendered again on every page load) and a refresh button
(`{tabname}_{name}_extra_refresh`); the gallery stays beside them. Page JavaScript inserts
text into the prompt with `webuiInsertPrompt(tabname, text)` (javascript/ui.js).

Other extension hooks used here: `ui_tabs(webui)` returns `(gradio_blocks, title, elem_id)` tuples rendered as
top-level tabs; `ui_settings(options)` runs before the Settings tab is built.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from fastapi import FastAPI, HTTPException, Query  # noqa: E402
from fastapi.responses import FileResponse  # noqa: E402
from pydantic import ValidationError  # noqa: E402

from modules.api import models  # noqa: E402
from modules.api.api import (  # noqa: E402
    INFOTEXT_FIELDS,
    ApiError,
    apply_options,
    infotext_has_hires,
    progress_payload,
    read_png_info,
    run_txt2img,
    switch_checkpoint,
    validation_message,
)
from modules.paths import REPO_ROOT  # noqa: E402
from modules.processing import USE_SAME_SAMPLER  # noqa: E402
from modules.ui_scripts import build_script_ui  # noqa: E402
from modules.ui_styles import styles_box  # noqa: E402

log = logging.getLogger(__name__)

ASSETS_PREFIX = "/webui-assets"
QUICKSETTINGS = ("sd_model_checkpoint", "forge_additional_modules")  # in the top bar, not in Settings


class ExtraNetworkPage(Protocol):
    """What an extra-networks page provides (see the module docstring)."""

    title: str
    name: str

    def create_html(self, tabname: str) -> str:
        """The page's HTML for the tab `tabname`."""
        ...

    def refresh(self) -> None:
        """Rescan the page's files."""
        ...


def extra_network_pages(webui: Any) -> list[Any]:
    """The registry of extra-network pages on the WebUI object (created empty on first use)."""
    return webui.extra_network_pages


def _all_extra_network_pages(webui: Any) -> list[Any]:
    pages = list(extra_network_pages(webui))
    for result in webui.callbacks.run("extra_networks_pages", webui):
        pages.extend(result if isinstance(result, (list, tuple)) else [result])
    unique: dict[str, Any] = {}
    for page in pages:
        unique.setdefault(str(getattr(page, "name", id(page))), page)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------- assets


@dataclass
class Assets:
    """Browser files served under `/webui-assets/`: URL path -> file on disk, in load order."""

    scripts: dict[str, Path] = field(default_factory=dict)
    styles: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def collect(cls, webui: Any, root: Path = REPO_ROOT) -> Assets:
        """The host's javascript/*.js and style.css first, then each loaded extension's."""
        assets = cls()
        host_js = root / "javascript"
        found = sorted(host_js.glob("*.js")) if host_js.is_dir() else []
        for path in sorted(found, key=lambda p: (p.name != "ui.js", p.name)):  # ui.js defines the helpers
            assets.scripts[f"host/javascript/{path.name}"] = path
        if (root / "style.css").is_file():
            assets.styles["host/style.css"] = root / "style.css"
        for ext in webui.extensions:
            if ext.error:
                continue
            for path in ext.javascript_files:
                assets.scripts[f"ext/{ext.name}/javascript/{path.name}"] = path
            if ext.stylesheet is not None:
                assets.styles[f"ext/{ext.name}/style.css"] = ext.stylesheet
        return assets

    def lookup(self, url_path: str) -> Path | None:
        """The file served at `/webui-assets/<url_path>`, or None (only listed files are served)."""
        return self.scripts.get(url_path) or self.styles.get(url_path)

    def head_html(self) -> str:
        """`<script>` and `<link>` tags for the page head (mtime in the query string defeats stale caches)."""
        def url(key: str, path: Path) -> str:
            return html.escape(f"{ASSETS_PREFIX}/{key}?v={int(path.stat().st_mtime)}", quote=True)

        tags = [f'<link rel="stylesheet" href="{url(k, p)}">' for k, p in self.styles.items()]
        tags += [f'<script src="{url(k, p)}"></script>' for k, p in self.scripts.items()]
        return "\n".join(tags)


def register_ui_routes(app: FastAPI, webui: Any, assets: Assets) -> None:
    """Routes the UI's browser code uses: the assets and `/internal/progress`."""

    def asset(path: str) -> FileResponse:
        found = assets.lookup(path)
        if found is None or not found.is_file():
            raise HTTPException(status_code=404, detail=f"no asset {path!r}")
        media = "text/javascript" if found.suffix == ".js" else "text/css"
        return FileResponse(found, media_type=media, headers={"Cache-Control": "no-cache"})

    def internal_progress(skip_current_image: bool = Query(False)) -> models.ProgressResponse:
        return progress_payload(webui, skip_current_image)

    app.add_api_route(ASSETS_PREFIX + "/{path:path}", asset, methods=["GET"], include_in_schema=False)
    app.add_api_route("/internal/progress", internal_progress, methods=["GET"],
                      response_model=models.ProgressResponse, include_in_schema=False)


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoint_titles(webui: Any) -> list[str]:
    try:
        return [info.title for info in webui.models.list_checkpoints()]
    except Exception as exc:  # a broken folder must not stop the UI from building
        log.warning("could not list checkpoints: %s", exc)
        return []


def _current_checkpoint_title(webui: Any) -> str | None:
    current = getattr(webui.models, "current", None)
    return current.checkpoint.title if current is not None else None


def _shown_checkpoint_title(webui: Any, titles: list[str]) -> str | None:
    """The loaded checkpoint's title; while the start-up load still runs (the page is served first), the one it
    loads: the `sd_model_checkpoint` option's when it names a listed file, else the first."""
    current = _current_checkpoint_title(webui)
    if current is not None or not titles:
        return current
    wanted = str(getattr(webui.args, "ckpt", None) or webui.options.get("sd_model_checkpoint") or "")
    return next((t for t in titles if wanted and (t == wanted or t.startswith(wanted))), titles[0])


@dataclass
class TopBar:
    """The top row: the checkpoint picker and Forge's "VAE / Text Encoder" picker, each with its rescan button."""

    checkpoint: Any
    checkpoint_refresh: Any
    modules: Any
    modules_refresh: Any


def _build_top_bar(webui: Any) -> TopBar:
    """The top row's components (`_wire_top_bar` wires them once the tabs exist)."""
    titles = _checkpoint_titles(webui)
    with gr.Row(elem_id="quicksettings"):
        picker = gr.Dropdown(label="Stable Diffusion checkpoint", choices=titles,
                             value=_shown_checkpoint_title(webui, titles), elem_id="setting_sd_model_checkpoint",
                             scale=4, min_width=320, allow_custom_value=True)  # see _wire_top_bar
        refresh = gr.Button("\u21bb", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
        modules = gr.Dropdown(label="VAE / Text Encoder", choices=_module_choices(webui), value=_module_value(webui),
                              multiselect=True, elem_id="setting_forge_additional_modules", scale=4, min_width=320)
        modules_refresh = gr.Button("\u21bb", elem_id="refresh_forge_additional_modules", scale=0, min_width=40)
    return TopBar(picker, refresh, modules, modules_refresh)


def _module_choices(webui: Any) -> list[str]:
    from modules import forge_modules  # noqa: PLC0415

    try:
        return forge_modules.list_module_files(webui.paths.models_dir)
    except OSError as exc:  # an unreadable folder must not stop the UI from building
        log.warning("could not list VAE / text encoder files: %s", exc)
        return []


def _module_value(webui: Any) -> list[str]:
    from modules import forge_modules  # noqa: PLC0415

    return forge_modules.stored_selection(webui.options)


def _modules_message(webui: Any) -> str:
    """What the loaded model now uses, for the toast after a change of "VAE / Text Encoder"."""
    from modules import flux_model  # noqa: PLC0415

    model = webui.models.current
    if model is None:
        return "VAE / Text Encoder saved; used when a model loads"
    if model.is_flux:
        files = flux_model.module_files(model)
        return f"{model.checkpoint.name} uses " + (", ".join(f.name for f in files) or "its own parts")
    applied = webui.vae.applied(model) if webui.vae is not None else None
    return f"{model.checkpoint.name}: VAE " + (applied.name if applied is not None else "of the checkpoint")


def _wire_top_bar(webui: Any, bar: TopBar, flux_dev_only: list[Any]) -> None:
    """Events of the top row. `flux_dev_only`: components shown only while a Flux dev model is current (the
    Distilled CFG Scale slider), updated after a checkpoint change (a chained event, so the Gradio API of
    `switch_checkpoint` keeps its one output)."""
    from modules import forge_modules  # noqa: PLC0415

    def change(title: str | None) -> Any:
        # A click on an option sends the event twice; the second still has the title without the hash the first
        # load added to the choices, which Gradio would refuse before this runs (hence allow_custom_value): it names
        # the checkpoint already loaded, so it only shows the current title.
        current = webui.models.current
        if not title or current is not None and title in (current.checkpoint.title, current.checkpoint.name):
            return gr.update(value=_current_checkpoint_title(webui))
        try:
            loaded = switch_checkpoint(webui, title)
        except ApiError as exc:
            gr.Warning(str(exc.detail))
            return gr.update(value=_current_checkpoint_title(webui))
        gr.Info(f"Loaded {loaded}")
        return gr.update(choices=_checkpoint_titles(webui), value=loaded)  # the title gains its hash once loaded

    def rescan() -> Any:
        from modules.api.api import refresh_checkpoints  # noqa: PLC0415

        refresh_checkpoints(webui)
        return gr.update(choices=_checkpoint_titles(webui), value=_current_checkpoint_title(webui))

    def change_modules(values: list[str] | None) -> Any:
        try:
            apply_options(webui, {forge_modules.OPTION: list(values or [])})
        except ApiError as exc:
            gr.Warning(str(exc.detail))
            return gr.update(value=_module_value(webui))
        gr.Info(_modules_message(webui))
        return gr.update(value=_module_value(webui))

    def rescan_modules() -> Any:
        return gr.update(choices=_module_choices(webui), value=_module_value(webui))

    changed = bar.checkpoint.input(change, inputs=[bar.checkpoint], outputs=[bar.checkpoint],
                                   show_progress="minimal", api_name="switch_checkpoint")
    bar.checkpoint_refresh.click(rescan, outputs=[bar.checkpoint], show_progress="hidden",
                                 api_name="refresh_checkpoints")
    bar.modules.input(change_modules, inputs=[bar.modules], outputs=[bar.modules], show_progress="minimal",
                      api_name="set_additional_modules")
    bar.modules_refresh.click(rescan_modules, outputs=[bar.modules], show_progress="hidden",
                              api_name="refresh_additional_modules")
    if flux_dev_only:
        changed.then(lambda: _flux_dev_visibility(webui, flux_dev_only), outputs=flux_dev_only,
                     show_progress="hidden", api_visibility="undocumented")


def _flux_dev_visibility(webui: Any, components: list[Any]) -> Any:
    """One `gr.update(visible=...)` per component (the update itself for one: Gradio takes a list as its value)."""
    shown = _shows_distilled_cfg(webui)
    updates = [gr.update(visible=shown) for _ in components]
    return updates[0] if len(updates) == 1 else updates


def _shows_distilled_cfg(webui: Any) -> bool:
    """Whether the Distilled CFG Scale slider shows: the current model (or, while the start-up load runs, the
    checkpoint it loads) is Flux dev, the variant with distilled guidance (schnell has none)."""
    from modules import flux_model  # noqa: PLC0415

    model = webui.models.current
    if model is not None:
        return bool(model.is_flux and model.unet.config.get("guidance_embeds"))
    title = _shown_checkpoint_title(webui, _checkpoint_titles(webui))
    info = webui.models.find(title) if title else None
    return info is not None and flux_model.checkpoint_has_guidance(Path(info.path))


def _refresh_top_bar(webui: Any) -> list[Any]:
    """The top row as it should show now (each page load asks: the model may have loaded since the UI was built)."""
    titles = _checkpoint_titles(webui)
    return [gr.update(choices=titles, value=_shown_checkpoint_title(webui, titles)),
            gr.update(choices=_module_choices(webui), value=_module_value(webui))]


# ---------------------------------------------------------------------------------------------- txt2img


@dataclass
class Txt2ImgControls:
    """The txt2img components by request field name (A1111 API names), in the order the handler gets them."""

    fields: dict[str, Any] = field(default_factory=dict)

    def names(self) -> list[str]:
        """The request field names, in handler order."""
        return list(self.fields)

    def components(self) -> list[Any]:
        """The components, in handler order."""
        return list(self.fields.values())


def _sampler_names(webui: Any) -> tuple[list[str], list[str], list[str]]:
    """(samplers, schedule types, hires upscalers) as the processing code names them."""
    from modules import processing, sampler_table  # noqa: PLC0415

    return (sampler_table.sampler_names(), sampler_table.schedule_type_names(),
            processing.upscaler_names(webui.upscalers))


def _build_extra_network_tabs(webui: Any, tabname: str) -> None:
    """One tab per extra-network page, beside the "Generation" tab (inside the caller's `gr.Tabs`)."""
    for page in _all_extra_network_pages(webui):
        # render_children: the page is in the DOM (and its script fetches the cards) before the tab is first opened
        with gr.Tab(page.title, id=f"{tabname}_{page.name}", elem_id=f"{tabname}_{page.name}_tab",
                    render_children=True):
            render = _page_renderer(page, tabname)
            cards = gr.HTML(render, elem_id=f"{tabname}_{page.name}_cards_html")
            button = gr.Button("Refresh", elem_id=f"{tabname}_{page.name}_extra_refresh", size="sm")
            button.click(_page_refresher(page, tabname), outputs=[cards], show_progress="minimal",
                         api_name=f"{tabname}_{page.name}_refresh")


def _page_renderer(page: Any, tabname: str) -> Callable[[], str]:
    def render() -> str:
        try:
            return page.create_html(tabname)
        except Exception as exc:
            log.exception("extra networks page %s failed to render", page.name)
            return f"<p class='webui-error'>{html.escape(page.title)}: {html.escape(str(exc))}</p>"

    return render


def _page_refresher(page: Any, tabname: str) -> Callable[[], str]:
    render = _page_renderer(page, tabname)

    def refresh() -> str:
        try:
            page.refresh()
        except Exception as exc:
            log.exception("extra networks page %s failed to refresh", page.name)
            gr.Warning(f"{page.title}: refresh failed: {exc}")
        return render()

    return refresh


def infotext_html(infotext: str) -> str:
    return f"<div class='webui-infotext'><p>{html.escape(infotext).replace(chr(10), '<br>')}</p></div>"


ERROR_MARKERS = ("not found", "not applied", "failed", "error", "cannot", "could not", "unknown")


def comment_severity(comment: str) -> str:
    """"error" when a comment says that something asked for did not happen (a LoRA not found or not applied, a
    callback that failed), else "warning" (it happened, differently than asked: a fallback, an ambiguous name)."""
    text = comment.lower()
    return "error" if any(marker in text for marker in ERROR_MARKERS) else "warning"


def _comments_html(comments: Any) -> str:
    """The generation's comments under the image, each styled by `comment_severity`, with an icon and a role so
    screen readers announce errors."""
    if not comments:
        return ""
    if isinstance(comments, dict):
        comments = list(comments.values())
    if isinstance(comments, str):
        comments = [comments]
    parts = []
    for comment in comments:
        severity = comment_severity(str(comment))
        icon, role = ("\u26d4", "alert") if severity == "error" else ("\u26a0\ufe0f", "status")
        parts.append(f"<p class='webui-comment webui-{severity}' role='{role}'><span class='webui-comment-icon' "
                     f"aria-hidden='true'>{icon}</span> {html.escape(str(comment))}</p>")
    return "".join(parts)


def ui_request(webui: Any, model: type[models.Txt2ImgRequest], names: list[str], values: list[Any],
                **extra: Any) -> Any:
    """A request model from UI values (None: the field's default) and `extra` request fields (the Script
    fields, `ScriptControls.request_fields`); `gr.Error` with the message when invalid."""
    data = {name: value for name, value in zip(names, values) if value is not None}  # unrendered: defaults
    if data.get("hr_sampler_name") == "":
        data.pop("hr_sampler_name")
    data["save_images"] = bool(webui.options.get("samples_save"))
    data["sampler_index"] = data.get("sampler_name") or "Euler"
    data.update(extra)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise gr.Error(validation_message(exc)) from exc


def generate_txt2img(webui: Any, names: list[str], values: list[Any],
                     script_fields: dict[str, Any] | None = None) -> tuple[list[Any], str, str, str]:
    """Run one generation from UI values (and the Script fields, `ScriptControls.request_fields`); returns (gallery
    images, info JSON, infotext HTML, comments HTML).

    Bad input raises `gr.Error` with the message (shown in the browser; the server keeps serving).
    """
    req = ui_request(webui, models.Txt2ImgRequest, names, values, **(script_fields or {}))
    try:
        processed = run_txt2img(webui, req)
    except ApiError as exc:
        raise gr.Error(str(exc.detail)) from exc
    return gallery_outputs(processed)


def gallery_outputs(processed: Any) -> tuple[list[Any], str, str, str]:
    """(gallery images with their infotext, info JSON, first infotext as HTML, comments HTML) of a result."""
    infotexts = list(processed.infotexts)
    images = []
    for i, image in enumerate(processed.images):
        if i < len(infotexts) and infotexts[i]:
            image.info["parameters"] = infotexts[i]  # the gallery's PNG keeps text chunks: downloads carry it
        images.append(image)
    first = infotexts[0] if infotexts else ""
    return images, processed.js(), infotext_html(first), _comments_html(getattr(processed, "comments", None))


def build_sampling_settings(webui: Any, tabname: str, f: dict[str, Any], distilled_cfg: bool = False) -> Any:
    """Sampler, schedule type, steps, size, batch, CFG, seed (with its random-seed button) and clip skip controls,
    with A1111's element ids for `tabname`. With `distilled_cfg`, Forge's "Distilled CFG Scale" slider (Flux dev's
    `distilled_cfg_scale`, shown only while a Flux dev model is current) above CFG Scale; it is returned, not put
    in `f` (the caller adds it last, so the Gradio API's positional inputs keep their order)."""
    samplers, schedules, _ = _sampler_names(webui)
    with gr.Row():
        f["sampler_name"] = gr.Dropdown(samplers, value="Euler" if "Euler" in samplers else samplers[0],
                                        label="Sampling method", elem_id=f"{tabname}_sampling")
        f["scheduler"] = gr.Dropdown(schedules, value=schedules[0], label="Schedule type",
                                     elem_id=f"{tabname}_scheduler")
    f["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tabname}_steps")
    with gr.Row():
        f["width"] = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id=f"{tabname}_width")
        f["height"] = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id=f"{tabname}_height")
    with gr.Row():
        f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tabname}_batch_count")
        f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tabname}_batch_size")
    distilled = None
    if distilled_cfg:
        from modules.flux_sampling import DEFAULT_DISTILLED_CFG  # noqa: PLC0415

        distilled = gr.Slider(0.0, 30.0, value=DEFAULT_DISTILLED_CFG, step=0.1, label="Distilled CFG Scale",
                              elem_id=f"{tabname}_distilled_cfg_scale", visible=_shows_distilled_cfg(webui))
    f["cfg_scale"] = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tabname}_cfg_scale")
    with gr.Row():
        f["seed"] = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{tabname}_seed", scale=4)
        random_seed = gr.Button("\u2684", elem_id=f"{tabname}_random_seed", scale=0, min_width=40)
        f["clip_skip"] = gr.Slider(1, 12, value=int(webui.options.get("CLIP_stop_at_last_layers")), step=1,
                                   label="Clip skip", elem_id=f"{tabname}_clip_skip", scale=3)
    random_seed.click(lambda: -1, outputs=[f["seed"]], show_progress="hidden", queue=False,
                      api_visibility="undocumented")
    return distilled


@dataclass
class GenerationTab:
    """The components of one generation tab (see `build_generation_tab`); `controls` are the request fields
    (`styles` last, then any a caller adds later, e.g. txt2img's `distilled_cfg_scale`), `script_controls` the
    Script dropdown and the scripts' inputs (None: the tab has none)."""

    tabname: str
    controls: Txt2ImgControls
    generate: Any
    interrupt: Any
    skip: Any
    gallery: Any
    generation_info: Any
    html_info: Any
    html_log: Any
    script_controls: Any = None

    def outputs(self) -> list[Any]:
        return [self.gallery, self.generation_info, self.html_info, self.html_log]


def build_generation_tab(webui: Any, tabname: str, parameters: Callable[[dict[str, Any]], None],
                         prompt_placeholder: str = "Prompt (<lora:name:0.8> tags apply LoRAs)",
                         scripts: bool = True) -> GenerationTab:
    """A1111's generation-tab layout, for txt2img and any tab like it (img2img):

        [ prompt / negative prompt                         ] [Generate        ]
                                                             [Interrupt] [Skip]
                                                             [styles          ]
        [ Generation | Lora | ...  (tabs)  ] [ progress bar, live preview ]
        [   parameters(fields), Script     ] [ gallery, infotext, warnings ]

    `parameters(fields)` builds the tab's own inputs inside the "Generation" tab and adds them to `fields`
    (request field name -> component; `prompt` and `negative_prompt` are already there); with `scripts` the Script
    dropdown (`modules.ui_scripts`) follows them. The extra-network pages (the Lora cards) are tabs beside
    "Generation", so the gallery stays beside the parameters and within one screen of Generate; below 800 px wide
    the two columns stack (style.css). Element ids follow A1111: `{tabname}_prompt`, `{tabname}_generate`,
    `{tabname}_gallery`, `html_info_{tabname}`, ... Wire the Generate button with `wire_generation`."""
    controls = Txt2ImgControls()
    f = controls.fields
    with gr.Row(elem_id=f"{tabname}_toprow", elem_classes=["webui-toprow"]):
        with gr.Column(scale=6, elem_id=f"{tabname}_prompt_container"):
            f["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tabname}_prompt",
                                     placeholder=prompt_placeholder)
            f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tabname}_neg_prompt",
                                              placeholder="Negative prompt")
        with gr.Column(scale=1, min_width=160, elem_id=f"{tabname}_actions_column",
                       elem_classes=["webui-actions-column"]):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tabname}_generate",
                                 elem_classes=["webui-generate"])
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{tabname}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{tabname}_skip")
            styles = styles_box(webui, tabname, f["prompt"], f["negative_prompt"])  # under the buttons, as A1111
    script_controls = None
    with gr.Row(elem_id=f"{tabname}_settings_and_results", elem_classes=["webui-settings-and-results"]):
        with gr.Column(scale=1, elem_id=f"{tabname}_settings", elem_classes=["webui-settings"]):
            with gr.Tabs(elem_id=f"{tabname}_extra_tabs"):
                with gr.Tab("Generation", id=f"{tabname}_generation", elem_id=f"{tabname}_generation_tab"):
                    parameters(f)
                    if scripts:
                        script_controls = build_script_ui(webui, tabname, is_img2img=tabname == "img2img")
                _build_extra_network_tabs(webui, tabname)
        with gr.Column(scale=1, elem_id=f"{tabname}_results", elem_classes=["webui-results"]):
            gr.HTML(f"<div class='webui-progress' data-tab='{html.escape(tabname, quote=True)}'></div>",
                    elem_id=f"{tabname}_progress")
            gallery = gr.Gallery(label="Output", elem_id=f"{tabname}_gallery", format="png", columns=2,
                                 height="45vh", object_fit="contain", show_label=False)
            generation_info = gr.Textbox(visible=False, elem_id=f"generation_info_{tabname}")
            html_info = gr.HTML(elem_id=f"html_info_{tabname}")
            html_log = gr.HTML(elem_id=f"html_log_{tabname}")
    f["styles"] = styles  # last, so the order of the other fields stays as it was
    return GenerationTab(tabname, controls, generate, interrupt, skip, gallery, generation_info, html_info, html_log,
                         script_controls)


def wire_generation(webui: Any, tab: GenerationTab, run: Callable[..., tuple[list[Any], str, str, str]],
                    api_name: str, extra_inputs: list[Any] | None = None) -> None:
    """Generate (and Enter in the prompt) call `run(*field values, *extra_inputs' values)` -> (images, info JSON,
    infotext HTML, comments HTML) with the progress bar shown while it runs; Interrupt stops the job, Skip ends
    the current image of a batch; selecting a gallery image shows its infotext. `api_name` is the Gradio API name
    of the Generate event."""
    name = tab.tabname
    event_args = {"fn": run, "inputs": [*tab.controls.components(), *(extra_inputs or [])],
                  "outputs": tab.outputs(),
                  "js": f"(...args) => {{ webuiStartProgress('{name}'); return args; }}",
                  "show_progress": "minimal", "concurrency_id": "generation"}
    for trigger, event_name, visibility in ((tab.generate.click, api_name, "public"),
                                            (tab.controls.fields["prompt"].submit, f"{api_name}_submit",
                                             "undocumented")):
        trigger(api_name=event_name, api_visibility=visibility, **event_args).then(
            fn=None, js=f"() => {{ webuiStopProgress('{name}'); }}", api_visibility="undocumented")
    tab.interrupt.click(lambda: webui.state.interrupt(), queue=False, show_progress="hidden",
                        api_name="interrupt" if name == "txt2img" else f"{name}_interrupt")
    tab.skip.click(lambda: webui.state.skip(), queue=False, show_progress="hidden",
                   api_name="skip" if name == "txt2img" else f"{name}_skip")

    def select_image(info: str, evt: gr.SelectData) -> str:
        try:
            infotexts = json.loads(info or "{}").get("infotexts") or []
        except json.JSONDecodeError:
            return gr.update()
        index = evt.index if isinstance(evt.index, int) else 0
        return infotext_html(infotexts[index]) if 0 <= index < len(infotexts) else gr.update()

    tab.gallery.select(select_image, inputs=[tab.generation_info], outputs=[tab.html_info], show_progress="hidden",
                       api_visibility="undocumented")


def _txt2img_parameters(webui: Any, f: dict[str, Any], late: dict[str, Any]) -> None:
    """The txt2img inputs of the "Generation" tab (A1111's order and element ids); `late` gets the fields added
    after A1111's (Distilled CFG Scale), which go after `styles` so positional Gradio API callers keep working."""
    samplers, _, upscalers = _sampler_names(webui)
    distilled = build_sampling_settings(webui, "txt2img", f, distilled_cfg=True)
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        f["enable_hr"] = gr.Checkbox(False, label="Enable hires. fix", elem_id="txt2img_enable_hr")
        with gr.Row():
            f["hr_upscaler"] = gr.Dropdown(upscalers, value=upscalers[0], label="Upscaler",
                                           elem_id="txt2img_hr_upscaler")
            f["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                  elem_id="txt2img_hires_steps")
            f["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                                elem_id="txt2img_denoising_strength")
        with gr.Row():
            f["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by",
                                      elem_id="txt2img_hr_scale")
            f["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id="txt2img_hr_resize_x")
            f["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id="txt2img_hr_resize_y")
        f["hr_sampler_name"] = gr.Dropdown([USE_SAME_SAMPLER, *samplers], value=USE_SAME_SAMPLER,
                                           label="Hires sampling method", elem_id="hr_sampler")
        f["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="hires_prompt",
                                    placeholder="empty: the same prompt")
        f["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2, elem_id="hires_neg_prompt",
                                             placeholder="empty: the same negative prompt")
    late["distilled_cfg_scale"] = distilled


def _build_txt2img(webui: Any) -> Txt2ImgControls:
    late: dict[str, Any] = {}
    tab = build_generation_tab(webui, "txt2img", lambda fields: _txt2img_parameters(webui, fields, late))
    tab.controls.fields.update(late)
    names = tab.controls.names()
    script_controls = tab.script_controls

    def run(*values: Any) -> tuple[list[Any], str, str, str]:
        return generate_txt2img(webui, names, list(values[:len(names)]),
                                script_controls.request_fields(list(values[len(names):])))

    wire_generation(webui, tab, run, "txt2img", script_controls.inputs())
    return tab.controls


# --------------------------------------------------------------------------------------------- png info


def _to_component_value(name: str, value: Any) -> Any:
    """Infotext values are text; give each txt2img/img2img field the type its component expects."""
    default = models.Img2ImgRequest.model_fields[name].default
    if name == "styles":  # `Styles array` (the styles' infotext handling) is a list already
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if isinstance(default, bool):
        return str(value).lower() in ("1", "true", "yes")
    if name in ("seed", "subseed", "steps", "width", "height", "clip_skip", "hr_second_pass_steps", "hr_resize_x",
                "hr_resize_y"):
        return int(float(value))
    if name in ("cfg_scale", "denoising_strength", "hr_scale", "subseed_strength", "distilled_cfg_scale"):
        return float(value)
    return str(value)


def _split_legacy_samplers(params: dict[str, Any], values: dict[str, Any]) -> None:
    """A1111 <= 1.8 wrote the schedule into the sampler's name ("DPM++ 2M Karras"): give the boxes the sampler
    ("DPM++ 2M") and the schedule type ("Karras"; the infotext's own `Schedule type` otherwise), as the API does
    (`sampler_table.resolve_sampler`). An unknown sampler or schedule type keeps the box's value, with a warning
    (none for Flux's `Simple`: Flux always uses it)."""
    from modules import flux_sampling, sampler_table  # noqa: PLC0415

    for field_name, key in (("sampler_name", "Schedule type"), ("hr_sampler_name", "Hires schedule type")):
        if field_name not in values or values[field_name] == USE_SAME_SAMPLER:  # a choice of the hires box
            continue
        info, schedule = sampler_table.resolve_sampler(values[field_name], params.get(key))
        if info is None:
            gr.Warning(f"Sampler {values[field_name]!r} from the infotext is not available; the current one is kept.")
            del values[field_name]
            continue
        values[field_name] = info.name
        if field_name == "sampler_name" and schedule:  # "Automatic" unless the name carried a schedule
            values["scheduler"] = schedule
    schedule = values.get("scheduler")
    if schedule is not None and schedule not in sampler_table.schedule_type_names():
        del values["scheduler"]  # the box keeps its value
        if schedule != flux_sampling.SCHEDULE:  # Flux's infotext names its one schedule, which is no choice here
            gr.Warning(f"Schedule type {schedule!r} from the infotext is not available; the current one is kept.")


def params_to_updates(params: dict[str, Any], controls: Txt2ImgControls,
                      extra: dict[str, Any] | None = None) -> list[Any]:
    """One `gr.update` per component from parsed infotext parameters (fields not mentioned keep theirs); `extra`
    holds component values computed by the caller (img2img's inpainting fields)."""
    values: dict[str, Any] = dict(extra or {})
    for key, name in INFOTEXT_FIELDS.items():
        if key in params and name in controls.fields:
            try:
                values[name] = _to_component_value(name, params[key])
            except (TypeError, ValueError):
                log.info("infotext %s=%r ignored: not a valid %s", key, params[key], name)
    _split_legacy_samplers(params, values)
    if "enable_hr" in controls.fields:
        values["enable_hr"] = infotext_has_hires(params)
    return [gr.update(value=values[name]) if name in values else gr.update() for name in controls.names()]


def _build_pnginfo(webui: Any, controls: Txt2ImgControls, tabs: Any, img2img: Any = None) -> None:
    """The PNG Info tab: read an image's parameters; "Send to txt2img" and (with `img2img`, a
    `modules.ui_img2img.Img2ImgTab`) "Send to img2img", which also makes the image the init image."""
    with gr.Row(elem_id="pnginfo_page"):
        with gr.Column():
            image = gr.Image(type="pil", image_mode=None, sources=["upload", "clipboard"], label="Source",
                             elem_id="pnginfo_image", height=420)
        with gr.Column():
            info_text = gr.Textbox(label="Parameters", lines=8, elem_id="pnginfo_generation_info",
                                   placeholder="Upload an image, or paste its parameters text here")
            with gr.Row():
                send = gr.Button("Send to txt2img", variant="primary", elem_id="pnginfo_send_txt2img")
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_img2img",
                                         visible=img2img is not None)
            items_html = gr.HTML(elem_id="pnginfo_html")

    def read(img: Any) -> tuple[str, str]:
        if img is None:
            return "", ""
        result = read_png_info(webui, img)
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in result.items.items())
        items = f"<table class='webui-pnginfo-items'>{rows}</table>" if rows else ""
        if not result.info:
            gr.Warning("This image has no generation parameters.")
        return result.info, items

    def send_to_txt2img(text: str) -> list[Any]:
        from modules.infotext import parse_generation_parameters  # noqa: PLC0415

        if not text or not text.strip():
            gr.Warning("No parameters to send.")
            return [gr.update() for _ in controls.names()] + [gr.update()]
        params = parse_generation_parameters(text, webui.callbacks)  # runs the infotext_pasted callbacks
        if not webui.options.get("send_seed"):  # A1111's "Send seed/size when sending prompt or image"
            for key in ("Seed", "Variation seed", "Variation seed strength"):
                params.pop(key, None)
        if not webui.options.get("send_size"):
            for key in ("Size-1", "Size-2"):
                params.pop(key, None)
        return params_to_updates(params, controls) + [gr.Tabs(selected="txt2img")]

    image.change(read, inputs=[image], outputs=[info_text, items_html], show_progress="minimal",
                 api_name="read_png_info")
    send.click(send_to_txt2img, inputs=[info_text], outputs=[*controls.components(), tabs], api_name="send_to_txt2img")
    if img2img is None:
        return
    from modules.ui_img2img import img2img_component_values  # noqa: PLC0415

    targets = img2img.controls

    def send_to_img2img(text: str, img: Any) -> list[Any]:
        from modules.infotext import parse_generation_parameters  # noqa: PLC0415

        if not text or not text.strip():
            gr.Warning("No parameters to send.")
            return [gr.update() for _ in targets.names()] + [gr.update(), gr.update()]
        params = parse_generation_parameters(text, webui.callbacks)
        updates = params_to_updates(params, targets, img2img_component_values(params, targets))
        return updates + [gr.update(value=img) if img is not None else gr.update(), gr.Tabs(selected="img2img")]

    send_img2img.click(send_to_img2img, inputs=[info_text, image],
                       outputs=[*targets.components(), img2img.init_image, tabs], api_name="send_to_img2img")


# --------------------------------------------------------------------------------------------- settings


def _setting_component(key: str, info: Any, value: Any) -> Any:
    common = {"label": info.label, "elem_id": f"setting_{key}", "info": info.comment or None}
    choices = info.current_choices()
    if info.kind == "bool":
        return gr.Checkbox(value=bool(value), **common)
    if choices is not None:
        multiselect = info.kind == "list"
        if not multiselect and value not in choices:
            choices = [*choices, value]
        return gr.Dropdown(choices=list(choices), value=value, multiselect=multiselect, **common)
    if info.kind in ("int", "float"):
        if info.minimum is not None and info.maximum is not None:
            step = info.step or (1 if info.kind == "int" else 0.01)
            return gr.Slider(info.minimum, info.maximum, value=value, step=step, **common)
        return gr.Number(value=value, precision=0 if info.kind == "int" else None, **common)
    if info.kind == "list":
        return gr.Textbox(value=", ".join(str(v) for v in value or []), **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


def _build_settings(webui: Any) -> None:
    webui.callbacks.run("ui_settings", webui.options)
    options = webui.options
    sections: dict[str, list[str]] = {}
    for key, info in options.infos.items():
        if key not in QUICKSETTINGS and info.section != "Hidden options":  # A1111 shows that section nowhere
            sections.setdefault(info.section, []).append(key)
    keys: list[str] = []
    components: list[Any] = []
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=200)
        result = gr.HTML(elem_id="settings_result")
    with gr.Tabs(elem_id="settings_sections"):
        for section, section_keys in sections.items():
            with gr.Tab(section, elem_id=f"settings_{section.lower().replace(' ', '_')}"):
                for key in section_keys:
                    keys.append(key)
                    components.append(_setting_component(key, options.infos[key], options.get(key)))

    def save(*values: Any) -> str:
        current = options.as_dict()
        wanted = {}
        for key, value in zip(keys, values):
            if options.infos[key].kind == "list" and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if value != current.get(key):
                wanted[key] = value
        if not wanted:
            return "<p>Nothing changed.</p>"
        try:
            changed = apply_options(webui, wanted)
        except ApiError as exc:
            gr.Warning(str(exc.detail))
            return f"<p class='webui-error'>{html.escape(str(exc.detail))}</p>"
        return f"<p>{len(changed)} setting(s) changed: {html.escape(', '.join(changed))}</p>"

    apply.click(save, inputs=components, outputs=[result], show_progress="minimal", api_name="apply_settings")


# ---------------------------------------------------------------------------------------------- shell


def create_ui(webui: Any) -> gr.Blocks:
    """Build the Blocks: checkpoint picker, then tabs txt2img, img2img, Extras, PNG Info, extension tabs,
    Settings."""
    from modules.ui_img2img import build_extras_tab, build_img2img_tab  # noqa: PLC0415 - they build on this module

    extension_tabs: list[tuple[Any, str, str]] = []
    for result in webui.callbacks.run("ui_tabs", webui):
        extension_tabs.extend(result if isinstance(result, list) else [result])
    # The img2img tab shows no script UIs of its own (its Script accordion is SD upscale's): build their components
    # now, outside any Blocks, so a request never builds them inside a running Gradio event (`complete_args`).
    for script in webui.scripts.img2img.scripts:
        webui.scripts.img2img.components(script)
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False) as demo:
        bar = _build_top_bar(webui)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                controls = _build_txt2img(webui)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = build_img2img_tab(webui)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                build_extras_tab(webui)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                _build_pnginfo(webui, controls, tabs, img2img)
            for block, title, elem_id in extension_tabs:
                with gr.Tab(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                    block.render()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                _build_settings(webui)
        flux_dev_only = [controls.fields["distilled_cfg_scale"]]
        _wire_top_bar(webui, bar, flux_dev_only)
        demo.load(lambda: _refresh_top_bar(webui), outputs=[bar.checkpoint, bar.modules], show_progress="hidden",
                  api_visibility="undocumented")
        demo.load(lambda: _flux_dev_visibility(webui, flux_dev_only), outputs=flux_dev_only, show_progress="hidden",
                  api_visibility="undocumented")
    demo.queue(default_concurrency_limit=1)
    return demo


def _theme() -> Any:
    """The default theme with local fonts only (the browser fetches nothing from the internet)."""
    return gr.themes.Default(font=["system-ui", "Segoe UI", "Arial", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def mount_ui(app: FastAPI, webui: Any) -> FastAPI:
    """Build the UI and mount it at `/` of `app`, with the host's and extensions' JavaScript and CSS."""
    assets = Assets.collect(webui)
    register_ui_routes(app, webui, assets)
    demo = create_ui(webui)
    webui.gradio_blocks = demo
    return gr.mount_gradio_app(
        app, demo, path="/",
        head=assets.head_html(), theme=_theme(), ssr_mode=False, mcp_server=False, footer_links=["api"],
        run_history=False, enable_monitoring=False, show_error=True, max_file_size="50mb",
        allowed_paths=[str(webui.paths.outputs_dir)],
    )
