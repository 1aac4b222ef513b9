"""The img2img and Extras tabs of the Gradio UI, built from the txt2img tab's builders (`modules.ui`).

img2img: the same layout as txt2img (`modules.ui.build_generation_tab`: prompt row, styles, the Lora cards in a tab
beside "Generation", progress bar and gallery beside the parameters),
plus three image sources as A1111 has them: "img2img" (an init image), "Inpaint" (paint the mask over the image:
whatever the brush covers is repainted) and "Inpaint upload" (an image and a separate black/white mask), the resize
mode, denoising strength, the inpainting settings and the "SD upscale" script. Generation goes through the API's
operation (`run_img2img_images`), so the UI and the API answer the same bad input with the same message.

Extras: upscale one image or a batch of files with one or two upscalers (scale by / scale to); results are saved
to outputs/extras-images with the source's infotext and the `postprocessing` text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image
from pydantic import ValidationError

from modules import masking, sd_upscale
from modules.api import models
from modules.api.api import ApiError, run_extras_images, run_img2img_images, validation_message
from modules.resize import RESIZE_MODES, flatten
from modules.ui import (
    Txt2ImgControls,
    build_generation_tab,
    build_sampling_settings,
    gallery_outputs,
    infotext_html,
    ui_request,
    wire_generation,
)

log = logging.getLogger(__name__)

IMAGE_SOURCES = ("img2img", "Inpaint", "Inpaint upload")
SCRIPTS = ("None", sd_upscale.TITLE)
# Radio fields whose component value is the choice label and whose request value is the label's index.
CHOICE_FIELDS: dict[str, tuple[str, ...]] = {
    "resize_mode": RESIZE_MODES,
    "inpainting_mask_invert": masking.MASK_MODES,
    "inpainting_fill": masking.MASKED_CONTENT,
    "inpaint_full_res": masking.INPAINT_AREAS,
}


@dataclass
class Img2ImgTab:
    """The img2img tab's request-field controls and its image components (for "Send to img2img")."""

    controls: Txt2ImgControls = field(default_factory=Txt2ImgControls)
    init_image: Any = None


def editor_mask(value: Any) -> tuple[Image.Image | None, Image.Image | None]:
    """(image, mask) from a `gr.ImageEditor` value: the background, and white wherever a layer is painted."""
    if not value or value.get("background") is None:
        return None, None
    background = value["background"]
    mask = np.zeros((background.height, background.width), dtype=np.uint8)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = np.asarray(layer.convert("RGBA").resize(background.size))[:, :, 3]
        mask[alpha > 0] = 255
    return flatten(background), Image.fromarray(mask, "L") if mask.any() else None


def generate_img2img(webui: Any, names: list[str], values: list[Any], source: str, init: Any, editor: Any,
                     upload: Any, upload_mask: Any, script: str, overlap: int, upscaler: str,
                     scale: float) -> tuple[list[Any], str, str, str]:
    """Run img2img from UI values and the chosen image source; `gr.Error` with the message on bad input."""
    mask = None
    if source == "Inpaint":
        init, mask = editor_mask(editor)
    elif source == "Inpaint upload":
        init, mask = upload, upload_mask
        if init is not None and mask is None:
            raise gr.Error("Inpaint upload: upload a mask too (white = repaint)")
    if init is None:
        raise gr.Error(f"{source}: upload an image first")
    data = dict(zip(names, values))
    for name, choices in CHOICE_FIELDS.items():
        if isinstance(data.get(name), str) and data[name] in choices:
            data[name] = choices.index(data[name])
    extra: dict[str, Any] = {}
    if script == sd_upscale.TITLE:
        extra = {"script_name": sd_upscale.SCRIPT_NAME, "script_args": ["", int(overlap), upscaler, float(scale)]}
    req = ui_request(webui, models.Img2ImgRequest, list(data), list(data.values()), **extra)
    try:
        processed = run_img2img_images(webui, req, [init], mask)
    except ApiError as exc:
        raise gr.Error(str(exc.detail)) from exc
    return gallery_outputs(processed)


def _img2img_parameters(webui: Any, f: dict[str, Any], images: dict[str, Any]) -> None:
    """The img2img inputs of the "Generation" tab: the image sources (their components go to `images`), resize
    mode, sampling settings, denoising strength, the inpainting settings and the SD upscale script."""
    # the selected image source (a hidden textbox, not a State, so that API clients of the UI can set it too)
    images["source"] = gr.Textbox(IMAGE_SOURCES[0], visible=False, elem_id="img2img_source")
    with gr.Tabs(elem_id="mode_img2img"):
        with gr.Tab("img2img", id="img2img_img2img_tab", elem_id="img2img_img2img_tab") as plain_tab:
            images["init"] = gr.Image(type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                                      label="Image for img2img", elem_id="img2img_image", height=360)
        with gr.Tab("Inpaint", id="img2img_inpaint_tab", elem_id="img2img_inpaint_tab") as sketch_tab:
            images["editor"] = gr.ImageEditor(type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                                              label="Image for inpainting: paint over what to repaint",
                                              elem_id="img2maskimg", height=360,
                                              brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
        with gr.Tab("Inpaint upload", id="img2img_inpaint_upload_tab",
                    elem_id="img2img_inpaint_upload_tab") as upload_tab:
            images["upload"] = gr.Image(type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                                        label="Image", elem_id="img_inpaint_base", height=260)
            images["upload_mask"] = gr.Image(type="pil", image_mode="RGBA", sources=["upload", "clipboard"],
                                             label="Mask (white = repaint)", elem_id="img_inpaint_mask", height=260)
    for tab_component, name in ((plain_tab, "img2img"), (sketch_tab, "Inpaint"), (upload_tab, "Inpaint upload")):
        tab_component.select(lambda n=name: n, outputs=[images["source"]], show_progress="hidden",
                             api_visibility="undocumented")
    f["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode", elem_id="resize_mode")
    build_sampling_settings(webui, "img2img", f)
    f["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                        elem_id="img2img_denoising_strength")
    with gr.Accordion("Inpainting", open=False, elem_id="img2img_inpainting"):
        f["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
        f["inpainting_mask_invert"] = gr.Radio(list(masking.MASK_MODES), value=masking.MASK_MODES[0],
                                               label="Mask mode", elem_id="img2img_mask_mode")
        f["inpainting_fill"] = gr.Radio(list(masking.MASKED_CONTENT), value=masking.MASKED_CONTENT[1],
                                        label="Masked content", elem_id="img2img_inpainting_fill")
        f["inpaint_full_res"] = gr.Radio(list(masking.INPAINT_AREAS), value=masking.INPAINT_AREAS[0],
                                         label="Inpaint area", elem_id="img2img_inpaint_full_res")
        f["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                                  elem_id="img2img_inpaint_full_res_padding")
    with gr.Accordion("Script", open=False, elem_id="img2img_script_container"):
        images["script"] = gr.Dropdown(list(SCRIPTS), value=SCRIPTS[0], label="Script", elem_id="img2img_script")
        with gr.Row():
            images["overlap"] = gr.Slider(0, 256, value=64, step=16, label="Tile overlap",
                                          elem_id="sd_upscale_overlap")
            images["scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Scale Factor",
                                        elem_id="sd_upscale_scale_factor")
        images["upscaler"] = gr.Dropdown(webui.upscalers.names(), value="Lanczos", label="Upscaler",
                                         elem_id="sd_upscale_upscaler_index")


def build_img2img_tab(webui: Any) -> Img2ImgTab:
    """Build the img2img tab (see the module docstring; the layout of `modules.ui.build_generation_tab`) and wire
    its Generate button. Decision: its Script accordion offers SD upscale (the Script plug-in `scripts/sd_upscale.py`
    through the API's path); the API's img2img takes every img2img script."""
    images: dict[str, Any] = {}
    generation = build_generation_tab(webui, "img2img", lambda fields: _img2img_parameters(webui, fields, images),
                                      scripts=False)
    tab = Img2ImgTab(controls=generation.controls, init_image=images["init"])
    names = tab.controls.names()
    image_inputs = [images[key] for key in ("source", "init", "editor", "upload", "upload_mask", "script", "overlap",
                                            "upscaler", "scale")]

    def run(*values: Any) -> tuple[list[Any], str, str, str]:
        count = len(names)
        return generate_img2img(webui, names, list(values[:count]), *values[count:])

    wire_generation(webui, generation, run, "img2img", image_inputs)
    return tab


def img2img_component_values(params: dict[str, Any], controls: Txt2ImgControls) -> dict[str, Any]:
    """Component values of the img2img-only fields from parsed infotext (radio fields as their labels)."""
    from modules.api.api import img2img_params_from_infotext  # noqa: PLC0415

    values: dict[str, Any] = {}
    for name, value in img2img_params_from_infotext(params).items():
        if name not in controls.fields:
            continue
        try:
            if name in CHOICE_FIELDS:
                values[name] = CHOICE_FIELDS[name][int(value)]
            else:
                values[name] = int(float(value)) if name != "initial_noise_multiplier" else float(value)
        except (TypeError, ValueError, IndexError):
            log.info("infotext value %r for %s ignored", value, name)
    return values


# ------------------------------------------------------------------------------------------------ extras


EXTRAS_SOURCES = ("Single Image", "Batch Process")


def run_extras_tab(webui: Any, source: str, image: Any, files: Any, mode: str, scale_by: float, width: int,
                   height: int, crop: bool, upscaler_1: str, upscaler_2: str,
                   visibility: float) -> tuple[Any, list[Any], str]:
    """Upscale the uploaded image (or every file of the batch), save the results to outputs/extras-images;
    returns (the single result, the batch results, info HTML). Bad input is a `gr.Error` with the message."""
    from modules.postprocessing import extras_folder, save_extras_image  # noqa: PLC0415

    if source == "Batch Process":
        sources = []
        for item in files or []:
            path = getattr(item, "name", None) or str(item)
            try:
                with Image.open(path) as opened:
                    opened.load()
                    sources.append(opened.copy())
            except OSError as exc:
                raise gr.Error(f"Extras batch: {Path(path).name} is not an image ({exc})") from exc
    else:
        sources = [image] if image is not None else []
    if not sources:
        raise gr.Error("Extras: upload an image first")
    try:
        req = models.ExtrasBaseRequest(resize_mode=1 if mode == "Scale to" else 0, upscaling_resize=scale_by,
                                       upscaling_resize_w=int(width), upscaling_resize_h=int(height),
                                       upscaling_crop=bool(crop), upscaler_1=upscaler_1, upscaler_2=upscaler_2,
                                       extras_upscaler_2_visibility=visibility)
    except ValidationError as exc:
        raise gr.Error(validation_message(exc)) from exc
    try:
        results, text = run_extras_images(webui, req, sources)
    except ApiError as exc:
        raise gr.Error(str(exc.detail)) from exc
    for original, result in zip(sources, results):
        save_extras_image(extras_folder(webui), original, result, text,
                          pnginfo_enabled=bool(webui.options.get("enable_pnginfo")))
    info = infotext_html(text) if text else "<p>Nothing to do: choose an upscaler.</p>"
    if source == "Batch Process":
        return None, results, info
    return results[0], [], info


def build_extras_tab(webui: Any) -> None:
    """Build the Extras tab (a single image or a batch of files)."""
    names = webui.upscalers.names()
    with gr.Row(elem_id="extras_page"):
        with gr.Column():
            source = gr.Textbox(EXTRAS_SOURCES[0], visible=False, elem_id="extras_source")
            with gr.Tabs(elem_id="mode_extras"):
                with gr.Tab("Single Image", id="extras_single_tab", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(type="pil", image_mode="RGB", sources=["upload", "clipboard"], label="Source",
                                     elem_id="extras_image", height=360)
                with gr.Tab("Batch Process", id="extras_batch_process_tab",
                            elem_id="extras_batch_process_tab") as batch_tab:
                    files = gr.File(file_count="multiple", file_types=["image"], label="Batch Process",
                                    elem_id="extras_image_batch")
            single_tab.select(lambda: EXTRAS_SOURCES[0], outputs=[source], api_visibility="undocumented")
            batch_tab.select(lambda: EXTRAS_SOURCES[1], outputs=[source], api_visibility="undocumented")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", id="extras_scale_by_tab") as by_tab:
                    scale_by = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", id="extras_scale_to_tab") as to_tab:
                    with gr.Row():
                        width = gr.Slider(64, 8192, value=512, step=8, label="Width", elem_id="extras_upscaling_resize_w")
                        height = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                           elem_id="extras_upscaling_resize_h")
                    crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            mode = gr.Textbox("Scale by", visible=False, elem_id="extras_resize_mode_value")
            by_tab.select(lambda: "Scale by", outputs=[mode], api_visibility="undocumented")
            to_tab.select(lambda: "Scale to", outputs=[mode], api_visibility="undocumented")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Image(type="pil", label="Result", elem_id="extras_result", format="png", interactive=False)
            gallery = gr.Gallery(label="Results", elem_id="extras_gallery", format="png", columns=3, height="auto")
            info = gr.HTML(elem_id="html_info_extras")

    def go(*values: Any) -> tuple[Any, list[Any], str]:
        return run_extras_tab(webui, *values)

    run.click(go, inputs=[source, image, files, mode, scale_by, width, height, crop, upscaler_1, upscaler_2,
                          visibility],
              outputs=[result, gallery, info], show_progress="minimal", api_name="extras", concurrency_id="extras")
