"""The `/sdapi/v1/*` routes (A1111 shapes) and the operations behind them, shared with the Gradio UI.

`Api(webui).register(app)` adds the routes to a FastAPI app. The operations (`run_txt2img`, `apply_options`,
`read_png_info`, `progress_payload`, ...) take the WebUI object and raise `ApiError` (an HTTPException with
A1111's `error` type name) for bad input, so the routes answer 4xx and the UI shows a warning; nothing a
client sends can stop the server. Generations and model switches are serialised through `webui.queue_lock`.
"""

from __future__ import annotations

import base64
import binascii
import html
import inspect
import io
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, HTTPException, Query
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from modules import sampler_table
from modules.api import models

log = logging.getLogger(__name__)

API_PREFIX = "/sdapi/v1"

# Infotext keys (A1111 names) -> txt2img request fields; used by `infotext` in requests and by "Send to txt2img".
INFOTEXT_FIELDS: dict[str, str] = {
    "Prompt": "prompt",
    "Negative prompt": "negative_prompt",
    "Steps": "steps",
    "Sampler": "sampler_name",
    "Schedule type": "scheduler",
    "CFG scale": "cfg_scale",
    "Seed": "seed",
    "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength",
    "Size-1": "width",
    "Size-2": "height",
    "Clip skip": "clip_skip",
    "Denoising strength": "denoising_strength",
    "Hires upscale": "hr_scale",
    "Hires upscaler": "hr_upscaler",
    "Hires steps": "hr_second_pass_steps",
    "Hires resize-1": "hr_resize_x",
    "Hires resize-2": "hr_resize_y",
    "Hires prompt": "hr_prompt",
    "Hires negative prompt": "hr_negative_prompt",
    "Hires sampler": "hr_sampler_name",
    "Distilled CFG Scale": "distilled_cfg_scale",  # Flux dev's guidance (Forge's infotext key)
    "Styles array": "styles",  # set by the styles' infotext_pasted handling (the infotext_styles option)
}


class ApiError(HTTPException):
    """A client error: `status_code`, A1111's `error` type name and a readable `detail`."""

    def __init__(self, status_code: int, error: str, detail: str) -> None:
        super().__init__(status_code=status_code, detail=detail)
        self.error = error


# ----------------------------------------------------------------------------------------------- images



REDACTED = "<redacted>"
SECRET_FLAG_WORDS = ("auth", "password", "token", "secret", "key")


def _is_secret_flag(name: str) -> bool:
    """Flags that hold credentials (`api_auth`, `gradio_auth`, tokens, keys): never sent back by `cmd-flags`."""
    return any(word in name.lower() for word in SECRET_FLAG_WORDS)

def encode_png_base64(image: Image.Image, infotext: str | None) -> str:
    """The image as base64 PNG text, with `infotext` in its `parameters` chunk when given."""
    from modules.images import image_to_png_bytes  # noqa: PLC0415

    return base64.b64encode(image_to_png_bytes(image, infotext)).decode("ascii")


MAX_IMAGE_SIDE = models.MAX_UPSCALE_SIDE
"""Largest width or height of an image a request may send (checked from the header, before decoding pixels)."""


def decode_base64_image(data: str, field: str = "image") -> Image.Image:
    """Decode base64 text or a `data:image/...;base64,` URL into a PIL image; ApiError 422 naming `field` when it
    is not one or is over `MAX_IMAGE_SIDE` pixels on a side."""
    if not isinstance(data, str) or not data:
        raise ApiError(422, "InvalidImage", f"{field}: no image given")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=False)
        image = Image.open(io.BytesIO(raw))
        if max(image.size) > MAX_IMAGE_SIDE:
            raise ApiError(422, "InvalidImage", f"{field}: image is {image.width}x{image.height}; at most "
                                                f"{MAX_IMAGE_SIDE} pixels per side are accepted")
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ApiError(422, "InvalidImage", f"{field}: not a valid base64-encoded image: {exc}") from exc
    return image


# ------------------------------------------------------------------------------------------- generation


def _processing():
    """The processing module (imported on first use so the API can be built before a model exists)."""
    from modules import processing  # noqa: PLC0415

    return processing


# Infotext keys of img2img/inpainting (A1111 names) -> img2img request fields, on top of INFOTEXT_FIELDS.
IMG2IMG_INFOTEXT_FIELDS: dict[str, str] = {
    "Mask blur": "mask_blur",
    "Masked area padding": "inpaint_full_res_padding",
    "Noise multiplier": "initial_noise_multiplier",
}
# Infotext keys whose text maps to a number of the request: key -> (field, {text: value}, value when absent).
# A1111 writes no key for its defaults (whole picture, "original" content, inpaint masked).
IMG2IMG_INFOTEXT_CHOICES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "Inpaint area": ("inpaint_full_res", {"Whole picture": False, "Only masked": True}, False),
    "Masked content": ("inpainting_fill", {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}, 1),
    "Mask mode": ("inpainting_mask_invert", {"Inpaint masked": 0, "Inpaint not masked": 1}, 0),
}


def img2img_params_from_infotext(params: dict[str, Any]) -> dict[str, Any]:
    """img2img request values from parsed infotext parameters (the img2img-only keys; A1111's paste fields).

    An img2img infotext with a mask names "Mask blur"; the keys it leaves out take the values A1111 writes no key
    for (whole picture, original content, inpaint masked)."""
    values: dict[str, Any] = {}
    for key, name in IMG2IMG_INFOTEXT_FIELDS.items():
        if key in params:
            values[name] = params[key]
    masked = "Mask blur" in params
    for key, (name, table, absent) in IMG2IMG_INFOTEXT_CHOICES.items():
        if key in params and params[key] in table:
            values[name] = table[params[key]]
        elif masked:
            values[name] = absent
    return values


def apply_infotext(webui: Any, req: models.Txt2ImgRequest) -> models.Txt2ImgRequest:
    """Fill the fields a request did not set from its `infotext` (A1111 1.8 behaviour); explicit fields win."""
    if not req.infotext:
        return req
    from modules.infotext import get_override_settings, parse_generation_parameters  # noqa: PLC0415

    params = parse_generation_parameters(req.infotext, webui.callbacks)
    values = req.model_dump()
    for key, field_name in INFOTEXT_FIELDS.items():
        if key in params and field_name not in req.model_fields_set:
            values[field_name] = params[key]
    if isinstance(req, models.Img2ImgRequest):
        for field_name, value in img2img_params_from_infotext(params).items():
            if field_name not in req.model_fields_set:
                values[field_name] = value
    overrides = dict(req.override_settings or {})  # options recorded in the infotext (A1111 1.8); explicit ones win
    for _, option, value in get_override_settings(params, webui.options):
        overrides.setdefault(option, value)
    values["override_settings"] = overrides or None
    if "enable_hr" not in req.model_fields_set and infotext_has_hires(params):
        values["enable_hr"] = True
    values["infotext"] = None
    try:
        return type(req).model_validate(values)
    except ValidationError as exc:
        raise ApiError(422, "InvalidInfotext", f"infotext gives invalid values: {validation_message(exc)}") from exc


def infotext_has_hires(params: dict[str, Any]) -> bool:
    """Whether parsed infotext parameters describe a hires-fix pass."""
    def number(key: str) -> float:
        try:
            return float(params.get(key) or 0)
        except (TypeError, ValueError):
            return 0.0

    return bool(number("Hires upscale") or number("Hires resize-1") or number("Hires steps"))


def processing_kwargs(req: models.Txt2ImgRequest, accepted: set[str] | None = None) -> dict[str, Any]:
    """The keyword arguments for `StableDiffusionProcessingTxt2Img` from an API request (A1111's mapping).

    Fields left at None take the processing defaults (clip skip and schedule from the settings, and so on);
    fields this processing does not know (restore_faces, tiling, ...) are dropped, as A1111 clients send them.
    """
    data = req.model_dump()
    sampler_index = data.pop("sampler_index")
    if not data.get("sampler_name"):
        data["sampler_name"] = sampler_index
    data["do_not_save_samples"] = not req.save_images
    data["do_not_save_grid"] = not req.save_images
    for name in ("send_images", "save_images", "script_name", "script_args", "alwayson_scripts", "infotext",
                 "force_task_id", "include_init_images"):
        data.pop(name, None)
    data = {key: value for key, value in data.items() if value is not None}  # None: the processing default
    if accepted is not None:
        dropped = sorted(key for key in data if key not in accepted)
        if dropped:
            log.debug("txt2img: fields not used by this processing: %s", ", ".join(dropped))
        data = {key: value for key, value in data.items() if key in accepted}
    return data


def _accepted_params(cls: type) -> set[str] | None:
    """Names `cls(...)` accepts, or None when it takes **kwargs."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def script_selection(webui: Any, req: Any, is_img2img: bool = False) -> Any:
    """The request's scripts (`modules.scripts.ScriptRun`) from `script_name`, `script_args` and `alwayson_scripts`;
    ApiError 422 `ScriptNotFound` naming an unknown script, `ScriptArgsError` for malformed args."""
    from modules.scripts import ScriptNotFoundError  # noqa: PLC0415

    runner = webui.scripts.runner(is_img2img)
    try:
        return runner.selection(req.script_name, req.script_args, req.alwayson_scripts)
    except ScriptNotFoundError as exc:
        raise ApiError(422, "ScriptNotFound", str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise ApiError(422, "ScriptArgsError", str(exc)) from exc


def run_with_scripts(webui: Any, p: Any) -> Any:
    """Run `p` under `webui.queue_lock`: its selected script's `run` (which may call `process_images` many times) or
    the plain generation; ApiError 422 for what the processing or the script refuses."""
    processing = _processing()
    with webui.queue_lock:
        try:
            if p.scripts is None:
                return processing.process_images(webui, p)
            return p.scripts.run(p, lambda cell: processing.process_images(webui, cell))
        except processing.ProcessingError as exc:
            raise ApiError(422, type(exc).__name__, str(exc)) from exc


def run_txt2img(webui: Any, req: models.Txt2ImgRequest) -> Any:
    """Validate and run one txt2img request under `webui.queue_lock`; returns the `Processed` result.

    Bad input (unknown sampler, sizes, malformed settings, an unknown script) raises ApiError 422 with the message.
    """
    selection = script_selection(webui, req, is_img2img=False)
    req = apply_infotext(webui, req)
    processing = _processing()
    cls = processing.StableDiffusionProcessingTxt2Img
    try:
        p = cls(**processing_kwargs(req, _accepted_params(cls)))
        p.validate(webui)
    except processing.ProcessingError as exc:
        raise ApiError(422, type(exc).__name__, str(exc)) from exc
    except (TypeError, ValueError) as exc:
        raise ApiError(422, type(exc).__name__, str(exc)) from exc
    p.scripts = selection
    return run_with_scripts(webui, p)


def run_img2img(webui: Any, req: models.Img2ImgRequest) -> Any:
    """Validate and run one img2img/inpainting request under `webui.queue_lock`; returns the `Processed` result.

    `script_name: "sd upscale"` runs `modules.sd_upscale` with A1111's `script_args`. A non-image init image or
    mask, bad fields or an unknown upscaler raise ApiError 422 naming the field.
    """
    req = apply_infotext(webui, req)  # type: ignore[assignment]
    if not req.init_images:
        raise ApiError(422, "InvalidImage", "init_images: at least one image is required")
    init_images = [decode_base64_image(data, f"init_images[{i}]") for i, data in enumerate(req.init_images)]
    mask = decode_base64_image(req.mask, "mask") if req.mask else None
    latent_mask = decode_base64_image(req.latent_mask, "latent_mask") if req.latent_mask else None
    return run_img2img_images(webui, req, init_images, mask, latent_mask)


def run_img2img_images(webui: Any, req: models.Img2ImgRequest, init_images: list[Image.Image],
                       mask: Image.Image | None, latent_mask: Image.Image | None = None) -> Any:
    """`run_img2img` with the images already decoded (the UI's path); the request's base64 images are ignored."""
    from modules.img2img import StableDiffusionProcessingImg2Img  # noqa: PLC0415

    selection = script_selection(webui, req, is_img2img=True)
    if not init_images:
        raise ApiError(422, "InvalidImage", "init_images: at least one image is required")
    processing = _processing()
    cls = StableDiffusionProcessingImg2Img
    try:
        kwargs = processing_kwargs(req, _accepted_params(cls))
        kwargs.update(init_images=init_images, mask=mask, latent_mask=latent_mask, enable_hr=False)
        if req.initial_noise_multiplier is None and "initial_noise_multiplier" in webui.options.infos:
            kwargs["initial_noise_multiplier"] = float(webui.options.get("initial_noise_multiplier"))
        p = cls(**kwargs)
        p.validate(webui)
    except (processing.ProcessingError, TypeError, ValueError) as exc:
        raise ApiError(422, type(exc).__name__, str(exc)) from exc
    p.scripts = selection
    return run_with_scripts(webui, p)


# ------------------------------------------------------------------------------------------------ extras


def _extras_settings(req: models.ExtrasBaseRequest) -> Any:
    from modules.postprocessing import ExtrasSettings  # noqa: PLC0415

    fields = ExtrasSettings.__dataclass_fields__
    return ExtrasSettings(**{k: v for k, v in req.model_dump().items() if k in fields})


def run_extras_images(webui: Any, req: models.ExtrasBaseRequest, sources: list[Image.Image]
                      ) -> tuple[list[Image.Image], str]:
    """Upscale `sources` by the request's settings under the queue lock; returns (images, postprocessing text).

    Face restoration, an unknown upscaler or an output over the size cap raise ApiError 422 naming the field.
    """
    from modules.postprocessing import ExtrasError, run_extras  # noqa: PLC0415
    from modules.upscalers import UpscalerError  # noqa: PLC0415

    settings = _extras_settings(req)
    results: list[Image.Image] = []
    text = ""
    try:
        settings.validate(webui.upscalers)
        with webui.queue_lock:
            for source in sources:
                image, text = run_extras(webui.upscalers, source, settings)
                results.append(image)
    except (ExtrasError, UpscalerError) as exc:
        raise ApiError(422, type(exc).__name__, str(exc)) from exc
    return results, text


def upscaler_items(webui: Any) -> list[models.UpscalerItem]:
    """`GET /sdapi/v1/upscalers`: None, Lanczos, Nearest, then every model file found (the folders are scanned
    again, so a file dropped in while the server runs shows up)."""
    webui.upscalers.refresh()
    return [models.UpscalerItem(name=entry.name, model_name=entry.model_name,
                                model_path=str(entry.path) if entry.path else None, model_url=None,
                                scale=entry.scale_hint)
            for entry in webui.upscalers.entries()]


def realesrgan_items(webui: Any) -> list[models.RealesrganItem]:
    """`GET /sdapi/v1/realesrgan-models`: the model files of models/RealESRGAN."""
    return [models.RealesrganItem(name=entry.name, path=str(entry.path),
                                  scale=int(entry.scale_hint) if entry.scale_hint else None)
            for entry in webui.upscalers.entries() if entry.folder == "RealESRGAN"]


# ---------------------------------------------------------------------------------------------- options


def _check_option(webui: Any, key: str, value: Any) -> Any:
    """Validate one option value (type, bounds, choices) without applying it; ApiError 422 when wrong."""
    info = webui.options.infos.get(key)
    if info is None:
        raise ApiError(422, "UnknownOption", f"unknown option {key!r}")
    try:
        coerced = info.coerce(value)
    except ValueError as exc:
        raise ApiError(422, "InvalidOption", str(exc)) from exc
    choices = info.current_choices()
    if key != "sd_model_checkpoint" and choices is not None and info.kind != "list" and coerced not in choices:
        raise ApiError(422, "InvalidOption", f"option {key!r} must be one of {choices!r}, got {coerced!r}")
    return coerced


def switch_checkpoint(webui: Any, name: str, modules: list[str] | None = None) -> str:
    """Load checkpoint `name` (title, name or path) under the queue lock; returns its title. `modules`: the
    "VAE / Text Encoder" selection to load it with (None: the option's).

    A checkpoint that is unknown or fails to load raises ApiError 422 and the loaded model stays.
    """
    manager = webui.models
    info = manager.find(name)
    if info is None:
        raise ApiError(422, "CheckpointNotFound", f"checkpoint {name!r} not found; see GET {API_PREFIX}/sd-models")
    with webui.queue_lock:
        try:
            loaded = manager.load(info, modules=modules)
        except Exception as exc:  # ModelLoadError, or anything a broken file makes torch/safetensors raise
            log.warning("checkpoint %s failed to load: %s", info.title, exc)
            raise ApiError(422, type(exc).__name__, f"checkpoint {info.title!r} failed to load: {exc}") from exc
    return loaded.checkpoint.title


def apply_options(webui: Any, values: dict[str, Any]) -> list[str]:
    """Validate every key first, switch the checkpoint and the VAE when asked, then save the rest; returns the
    changed keys.

    Keys no part of this WebUI registered are stored as sent and sent back by `GET /options` (A1111 keeps such
    keys of its config.json too; its `POST /options` answers 500 KeyError for them, which breaks clients written
    for A1111 with extensions). Read-only keys (`sd_checkpoint_hash`) are ignored.
    """
    from modules.shared_options_a1111 import is_read_only  # noqa: PLC0415

    infos = webui.options.infos
    unknown = {key: value for key, value in values.items() if key not in infos}
    values = {key: value for key, value in values.items() if key in infos and not is_read_only(key)}
    checked = {key: _check_option(webui, key, value) for key, value in values.items()}
    wanted_ckpt = checked.get("sd_model_checkpoint")
    if wanted_ckpt:
        checked["sd_model_checkpoint"] = switch_checkpoint(webui, str(wanted_ckpt),
                                                           checked.get("forge_additional_modules"))
    elif "sd_model_checkpoint" in checked:
        del checked["sd_model_checkpoint"]  # an empty name means "keep the current model"
    if "sd_vae" in checked:
        apply_vae(webui, str(checked["sd_vae"]))
    if "forge_additional_modules" in checked:
        apply_additional_modules(webui, list(checked["forge_additional_modules"]))
    changed: list[str] = []
    try:
        webui.options.check_unregistered(unknown)
    except ValueError as exc:
        raise ApiError(422, "InvalidOption", str(exc)) from exc
    if checked:
        try:
            changed = webui.options.update(checked)
        except (KeyError, ValueError) as exc:
            raise ApiError(422, "InvalidOption", str(exc)) from exc
    if unknown:
        log.warning("POST /options: keys no part of this WebUI uses, stored as sent: %s", ", ".join(sorted(unknown)))
        webui.options.store_unregistered(unknown)
    return changed


def apply_vae(webui: Any, selection: str) -> None:
    """Apply the VAE `selection` to the loaded model under the queue lock; ApiError 422 when the file does not load
    (the model keeps its VAE)."""
    from modules.sd_vae import VaeLoadError  # noqa: PLC0415

    if webui.vae is None or webui.models is None:
        return
    with webui.queue_lock:
        try:
            webui.vae.apply(webui.models.current, selection)
        except VaeLoadError as exc:
            raise ApiError(422, "VaeLoadError", str(exc)) from exc


def apply_additional_modules(webui: Any, names: list[str]) -> None:
    """Make the loaded model use the "VAE / Text Encoder" selection `names` under the queue lock
    (`modules.forge_modules.apply`: a Flux single file reloads); ApiError 422 when it does not load (the model
    stays as it was)."""
    from modules import forge_modules  # noqa: PLC0415
    from modules.sd_models import ModelLoadError  # noqa: PLC0415
    from modules.sd_vae import VaeLoadError  # noqa: PLC0415

    with webui.queue_lock:
        try:
            forge_modules.apply(webui, names)
        except (ModelLoadError, VaeLoadError) as exc:
            log.warning("VAE / Text Encoder %s not applied: %s", names, exc)
            raise ApiError(422, type(exc).__name__, f"VAE / Text Encoder: {exc}") from exc


_JSON_KINDS: dict[str, tuple[type, Any]] = {
    "bool": (bool, lambda v: isinstance(v, bool)),
    "int": (int, lambda v: not isinstance(v, bool) and (isinstance(v, int) or isinstance(v, float) and v.is_integer())),
    "float": (float, lambda v: not isinstance(v, bool) and isinstance(v, (int, float))),
    "list": (list[Any], lambda v: isinstance(v, list)),
    "str": (str, lambda v: isinstance(v, str)),
}


def _json_kind(kind: str) -> Any:
    """The option kind's Python type, accepting only the matching JSON type (no `true` for a number, no
    `"5"` for an integer), so the request schema says exactly what is accepted."""
    python_type, accepts = _JSON_KINDS[kind]

    def check(value: Any) -> Any:
        if not accepts(value):
            raise ValueError(f"expected a {kind}, got {type(value).__name__}")
        return value

    return Annotated[python_type, BeforeValidator(check)]


def options_model(webui: Any) -> type[BaseModel]:
    """A pydantic model of every registered option (types, bounds, fixed choices) for the request body and the
    OpenAPI document; unknown keys are kept (see `apply_options`). An absent key leaves the option unchanged."""
    fields: dict[str, Any] = {}
    for key, info in webui.options.infos.items():
        if not key.isidentifier() or key.startswith("_"):
            continue
        field_type: Any = _json_kind(info.kind)
        if info.default is None:  # A1111 options whose default is null (upscaler_for_img2img) accept null
            field_type = field_type | None
        choices = info.choices if isinstance(info.choices, list) else None
        if choices and info.kind in ("str", "int") and key != "sd_model_checkpoint":
            field_type = Literal[tuple(choices)]
        constraints = {}
        if info.kind in ("int", "float"):
            if info.minimum is not None:
                constraints["ge"] = info.minimum
            if info.maximum is not None:
                constraints["le"] = info.maximum
        fields[key] = (field_type, Field(None, title=info.label, **constraints))
    return create_model(
        "Options",
        __config__=ConfigDict(extra="allow", protected_namespaces=()),
        **fields,
    )


# --------------------------------------------------------------------------------------------- progress


def _image_base64(image: Any) -> str | None:
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def progress_payload(webui: Any, skip_current_image: bool = False) -> models.ProgressResponse:
    """The running job's progress, ETA and (unless skipped) the live preview as base64 PNG."""
    state = webui.state
    started = state.started_at
    return models.ProgressResponse(
        progress=round(state.progress, 4),
        eta_relative=round(state.eta_relative, 2),
        active=state.active,
        state=models.ProgressState(
            skipped=bool(getattr(state, "skipped", False)),
            interrupted=bool(state.interrupted),
            job=state.job,
            job_count=state.job_count,
            job_no=state.job_no,
            job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(started)) if started else "0",
            sampling_step=state.sampling_step,
            sampling_steps=state.sampling_steps,
        ),
        current_image=None if skip_current_image else _image_base64(state.current_image),
        textinfo=state.display_text or None,
    )


# ---------------------------------------------------------------------------------------------- png info


def read_png_info(webui: Any, image: Image.Image) -> models.PngInfoResponse:
    """Infotext, other metadata and parsed parameters of an image, after the `infotext_pasted` callbacks ran."""
    from modules.images import read_info_from_image  # noqa: PLC0415
    from modules.infotext import parse_generation_parameters  # noqa: PLC0415

    text, items = read_info_from_image(image)
    params: dict[str, Any] = parse_generation_parameters(text, webui.callbacks) if text else {}
    safe_items = {str(k): v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
                  for k, v in (items or {}).items()}
    return models.PngInfoResponse(info=text or "", items=safe_items, parameters=params)


# ------------------------------------------------------------------------------------------ checkpoints


def checkpoint_items(webui: Any) -> list[models.SDModelItem]:
    """`GET /sdapi/v1/sd-models` entries for every checkpoint found."""
    items = []
    for info in webui.models.list_checkpoints():
        name = str(info.name)
        items.append(models.SDModelItem(
            title=info.title,
            model_name=str(Path(name.replace("\\", "_").replace("/", "_")).with_suffix("")),
            hash=getattr(info, "short_hash", None) or None,
            sha256=getattr(info, "sha256", None) or None,
            filename=str(info.path),
            config=getattr(info, "config", None),
        ))
    return items


def refresh_checkpoints(webui: Any) -> None:
    """Rescan the checkpoint folder."""
    manager = webui.models
    refresh = getattr(manager, "refresh", None)
    if callable(refresh):
        refresh()
    else:
        manager.list_checkpoints()


def sampler_items() -> list[models.SamplerItem]:
    """The samplers under their A1111 names, with aliases and the scheduler options they set."""
    return [
        models.SamplerItem(name=s.name, aliases=list(s.aliases),
                           options={k: v if isinstance(v, (str, int, float, bool)) else str(v)
                                    for k, v in s.options.items()})
        for s in sampler_table.SAMPLERS
    ]


def scheduler_items() -> list[models.SchedulerItem]:
    """The schedule types (A1111's `GET /sdapi/v1/schedulers`): lower-case name, label, aliases."""
    names = {label: alias for alias, label in sampler_table.SCHEDULE_ALIASES.items()}
    return [models.SchedulerItem(name=names.get(label, label.lower().replace(" ", "_")), label=label)
            for label in sampler_table.schedule_type_names()]


def _html_info(text: str) -> str:
    """A1111's `html_info` of Extras: the postprocessing text as an escaped HTML paragraph."""
    return f"<p>{html.escape(text)}</p>" if text else ""


def script_infos(webui: Any) -> list[models.ScriptInfo]:
    """`GET /sdapi/v1/script-info`: every script of both tabs with its arguments (A1111's shape)."""
    infos = []
    for runner in (webui.scripts.txt2img, webui.scripts.img2img):
        for script in runner.scripts:
            try:
                args = [models.ScriptArg(**vars(arg)) for arg in runner.arg_infos(script)]
            except Exception:  # a script whose UI fails to build is still listed
                log.exception("script %s: ui() failed", script.name)
                args = []
            infos.append(models.ScriptInfo(name=script.name, is_alwayson=script.alwayson,
                                           is_img2img=runner.is_img2img, args=args))
    return infos


def validation_message(exc: ValidationError | Any) -> str:
    """One readable line from pydantic/FastAPI validation errors: `field: message; field: message`."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", "")))
    return "; ".join(parts) or str(exc)


# ----------------------------------------------------------------------------------------------- routes


class Api:
    """The `/sdapi/v1` routes for one WebUI object."""

    def __init__(self, webui: Any) -> None:
        self.webui = webui

    def register(self, app: FastAPI) -> None:
        """Add every route to `app`."""
        webui = self.webui
        errors = models.ERROR_RESPONSES
        options_body = options_model(webui)

        def txt2img(req: models.Txt2ImgRequest) -> models.Txt2ImgResponse:
            req = apply_infotext(webui, req)  # `parameters` echoes the request with its infotext applied (A1111)
            processed = run_txt2img(webui, req)
            images: list[str] = []
            if req.send_images:
                infotexts = list(processed.infotexts)
                images = [encode_png_base64(image, infotexts[i] if i < len(infotexts) else None)
                          for i, image in enumerate(processed.images)]
            return models.Txt2ImgResponse(images=images, parameters=req.model_dump(), info=processed.js())

        def get_options() -> dict[str, Any]:
            return webui.options.as_dict()

        def set_options(req: BaseModel) -> None:
            apply_options(webui, req.model_dump(exclude_unset=True))

        set_options.__annotations__["req"] = options_body  # the model is built from the registered options

        def sd_models() -> list[models.SDModelItem]:
            return checkpoint_items(webui)

        def refresh() -> None:
            refresh_checkpoints(webui)

        def progress(skip_current_image: bool = Query(False)) -> models.ProgressResponse:
            return progress_payload(webui, skip_current_image)

        def interrupt() -> None:
            webui.state.interrupt()

        def png_info(req: models.PngInfoRequest) -> models.PngInfoResponse:
            return read_png_info(webui, decode_base64_image(req.image))

        def samplers() -> list[models.SamplerItem]:
            return sampler_items()

        def schedulers() -> list[models.SchedulerItem]:
            return scheduler_items()

        def img2img(req: models.Img2ImgRequest) -> models.Img2ImgResponse:
            processed = run_img2img(webui, req)
            images = []
            if req.send_images:
                infotexts = list(processed.infotexts)
                images = [encode_png_base64(image, infotexts[i] if i < len(infotexts) else None)
                          for i, image in enumerate(processed.images)]
            parameters = req.model_dump()
            if not req.include_init_images:
                parameters["init_images"] = None
                parameters["mask"] = None
            return models.Img2ImgResponse(images=images, parameters=parameters, info=processed.js())

        def extra_single_image(req: models.ExtrasSingleImageRequest) -> models.ExtrasSingleImageResponse:
            results, text = run_extras_images(webui, req, [decode_base64_image(req.image, "image")])
            image = encode_png_base64(results[0], None) if req.show_extras_results and results else None
            return models.ExtrasSingleImageResponse(html_info=_html_info(text), image=image)

        def extra_batch_images(req: models.ExtrasBatchImagesRequest) -> models.ExtrasBatchImagesResponse:
            sources = [decode_base64_image(item.data, f"imageList[{i}].data") for i, item in enumerate(req.imageList)]
            results, text = run_extras_images(webui, req, sources)
            images = [encode_png_base64(image, None) for image in results] if req.show_extras_results else []
            return models.ExtrasBatchImagesResponse(html_info=_html_info(text), images=images)

        def upscalers() -> list[models.UpscalerItem]:
            return upscaler_items(webui)

        def realesrgan_models() -> list[models.RealesrganItem]:
            return realesrgan_items(webui)

        def latent_upscale_modes() -> list[models.LatentUpscaleModeItem]:
            return [models.LatentUpscaleModeItem(name=name) for name in _processing().LATENT_UPSCALE_MODES]

        def scripts() -> models.ScriptsList:
            return models.ScriptsList(txt2img=[s.name for s in webui.scripts.txt2img.scripts],
                                      img2img=[s.name for s in webui.scripts.img2img.scripts])

        def script_info() -> list[models.ScriptInfo]:
            return script_infos(webui)

        def unload_checkpoint() -> None:
            with webui.queue_lock:
                webui.models.unload()

        def reload_checkpoint() -> None:
            with webui.queue_lock:
                try:
                    webui.models.get()
                except Exception as exc:  # ModelLoadError: nothing loadable
                    raise ApiError(422, type(exc).__name__, str(exc)) from exc

        def cmd_flags() -> dict[str, Any]:
            """The flags, with credentials redacted (A1111 returns `--api-auth` passwords to every client)."""
            return {k: REDACTED if v and _is_secret_flag(k) else
                    v if isinstance(v, (str, int, float, bool, list)) or v is None else str(v)
                    for k, v in vars(webui.args).items()}

        route = app.add_api_route
        route(f"{API_PREFIX}/txt2img", txt2img, methods=["POST"], response_model=models.Txt2ImgResponse,
              responses=errors, summary="Generate images from a prompt")
        route(f"{API_PREFIX}/options", get_options, methods=["GET"], response_model=dict[str, Any],
              responses=errors, summary="Current values of every option")
        route(f"{API_PREFIX}/options", set_options, methods=["POST"], response_model=None, responses=errors,
              summary="Set options (all validated first; sd_model_checkpoint switches the model)")
        route(f"{API_PREFIX}/sd-models", sd_models, methods=["GET"], response_model=list[models.SDModelItem],
              responses=errors, summary="Checkpoints found")
        route(f"{API_PREFIX}/refresh-checkpoints", refresh, methods=["POST"], response_model=None,
              responses=errors, summary="Rescan the checkpoint folder")
        route(f"{API_PREFIX}/progress", progress, methods=["GET"], response_model=models.ProgressResponse,
              responses=errors, summary="Progress of the running generation")
        route(f"{API_PREFIX}/interrupt", interrupt, methods=["POST"], response_model=None, responses=errors,
              summary="Stop the running generation")
        route(f"{API_PREFIX}/png-info", png_info, methods=["POST"], response_model=models.PngInfoResponse,
              responses=errors, summary="Generation parameters stored in an image")
        route(f"{API_PREFIX}/samplers", samplers, methods=["GET"], response_model=list[models.SamplerItem],
              responses=errors, summary="Sampler names")
        route(f"{API_PREFIX}/schedulers", schedulers, methods=["GET"], response_model=list[models.SchedulerItem],
              responses=errors, summary="Schedule types")
        route(f"{API_PREFIX}/img2img", img2img, methods=["POST"], response_model=models.Img2ImgResponse,
              responses=errors, summary="Generate images from images (img2img, inpainting, SD upscale)")
        route(f"{API_PREFIX}/extra-single-image", extra_single_image, methods=["POST"],
              response_model=models.ExtrasSingleImageResponse, responses=errors, summary="Upscale one image")
        route(f"{API_PREFIX}/extra-batch-images", extra_batch_images, methods=["POST"],
              response_model=models.ExtrasBatchImagesResponse, responses=errors, summary="Upscale several images")
        route(f"{API_PREFIX}/upscalers", upscalers, methods=["GET"], response_model=list[models.UpscalerItem],
              responses=errors, summary="Upscalers for hires fix, SD upscale and Extras")
        route(f"{API_PREFIX}/realesrgan-models", realesrgan_models, methods=["GET"],
              response_model=list[models.RealesrganItem], responses=errors,
              summary="Upscaler model files in models/RealESRGAN")
        route(f"{API_PREFIX}/latent-upscale-modes", latent_upscale_modes, methods=["GET"],
              response_model=list[models.LatentUpscaleModeItem], responses=errors, summary="Latent upscale modes")
        route(f"{API_PREFIX}/scripts", scripts, methods=["GET"], response_model=models.ScriptsList,
              responses=errors, summary="Script plug-ins available to requests")
        route(f"{API_PREFIX}/script-info", script_info, methods=["GET"], response_model=list[models.ScriptInfo],
              responses=errors, summary="Every script with its arguments (labels, defaults, bounds, choices)")
        route(f"{API_PREFIX}/unload-checkpoint", unload_checkpoint, methods=["POST"], response_model=None,
              responses=errors, summary="Free the loaded model (the next generation loads it again)")
        route(f"{API_PREFIX}/reload-checkpoint", reload_checkpoint, methods=["POST"], response_model=None,
              responses=errors, summary="Load the selected checkpoint if none is loaded")
        route(f"{API_PREFIX}/cmd-flags", cmd_flags, methods=["GET"], response_model=dict[str, Any],
              responses=errors, summary="Command-line flags the server runs with")
        from modules.api import a1111_routes  # noqa: PLC0415 - imports this module

        a1111_routes.register(app, webui)
