"""Request and response models of the HTTP API, with A1111's field names so existing clients work unchanged.

Bounds are declared on the fields (so the OpenAPI document tells clients and fuzzers what is valid); the
generation code checks the rest (sampler names, model state) and answers 422 with a message.
Unknown request fields are ignored, as in A1111 (clients written for forks send extra fields).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SIZE = 4096
MAX_SEED = 2**64 - 1  # A1111 passes seeds to torch generators, which take up to 2**64 - 1
MAX_UPSCALE_SIDE = 8192  # = modules.upscalers.MAX_OUTPUT_SIDE (this module imports nothing heavy)


class ApiModel(BaseModel):
    """Base of the request models: extra fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class Txt2ImgRequest(ApiModel):
    """Body of `POST /sdapi/v1/txt2img` (A1111's `StableDiffusionTxt2ImgProcessingAPI`)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(-1, ge=-1, le=MAX_SIZE)
    seed_resize_from_w: int = Field(-1, ge=-1, le=MAX_SIZE)
    sampler_name: str | None = Field(None, description="one of GET /sdapi/v1/samplers; default: sampler_index")
    sampler_index: str = Field("Euler", description="A1111's older name for sampler_name")
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=1000)
    steps: int = Field(20, ge=1, le=500)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=8, le=MAX_SIZE, description="floored to a multiple of 8, as A1111 does")
    height: int = Field(512, ge=8, le=MAX_SIZE, description="floored to a multiple of 8, as A1111 does")
    clip_skip: int | None = Field(None, ge=1, le=12, description="default: the CLIP_stop_at_last_layers option")
    restore_faces: bool | None = None
    tiling: bool | None = Field(None, description="seamless tiling (circular padding); null: the tiling option")
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    distilled_cfg_scale: float | None = Field(None, ge=0.0, le=30.0, description="Flux dev's distilled guidance "
                                              "(Forge's field); default 3.5")
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = Field(0, ge=0, le=MAX_SIZE)
    firstphase_height: int = Field(0, ge=0, le=MAX_SIZE)
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=500)
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIZE, multiple_of=8)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIZE, multiple_of=8)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    """Body of `POST /sdapi/v1/img2img` (A1111's `StableDiffusionImg2ImgProcessingAPI`): the txt2img fields (hires
    fix ones ignored) plus the init images and the inpainting settings."""

    init_images: list[str] = Field(default_factory=list, description="base64 images (or data: URLs)")
    resize_mode: int = Field(0, ge=0, le=3, description="0 just resize, 1 crop and resize, 2 resize and fill, "
                                                         "3 just resize (latent upscale)")
    denoising_strength: float | None = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: float | None = Field(None, description="accepted; only instruct-pix2pix models use it")
    mask: str | None = Field(None, description="base64 mask image: white = repaint")
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    mask_blur: int | None = Field(None, ge=0, le=256, description="sets mask_blur_x and mask_blur_y")
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="inpaint area: true = only masked, false = whole picture")
    inpaint_full_res_padding: int = Field(0, ge=0, le=256, description="only masked: padding in pixels")
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="1 = inpaint not masked")
    initial_noise_multiplier: float | None = Field(None, ge=0.0, le=1.5)
    latent_mask: str | None = Field(None, description="base64 mask for masked content and the latent blend "
                                                       "(default: mask)")
    include_init_images: bool = Field(False, description="echo init_images and mask in `parameters`")


class Txt2ImgResponse(BaseModel):
    """Answer of `POST /sdapi/v1/txt2img`: base64 PNGs (infotext in their `parameters` chunk), the request, info."""

    images: list[str] = Field(default_factory=list, description="base64 PNG images ([] with send_images false)")
    parameters: dict[str, Any]
    info: str = Field(description="JSON text: seeds, infotexts and the other generation facts")


class Img2ImgResponse(Txt2ImgResponse):
    """Answer of `POST /sdapi/v1/img2img` (the txt2img shape)."""


class ExtrasBaseRequest(ApiModel):
    """The upscaling settings of the Extras routes (A1111's `ExtrasBaseRequest`)."""

    resize_mode: int = Field(0, ge=0, le=1, description="0 scale by upscaling_resize, 1 scale to width x height")
    show_extras_results: bool = Field(True, description="return the images")
    gfpgan_visibility: float = Field(0, ge=0, le=1, description="must be 0: no face restorer is installed")
    codeformer_visibility: float = Field(0, ge=0, le=1, description="must be 0: no face restorer is installed")
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0, le=8, description="scale factor (resize_mode 0)")
    upscaling_resize_w: int = Field(512, ge=1, le=MAX_UPSCALE_SIDE, description="target width (resize_mode 1)")
    upscaling_resize_h: int = Field(512, ge=1, le=MAX_UPSCALE_SIDE, description="target height (resize_mode 1)")
    upscaling_crop: bool = Field(True, description="crop to exactly width x height (resize_mode 1)")
    upscaler_1: str = Field("None", description="one of GET /sdapi/v1/upscalers")
    upscaler_2: str = Field("None", description="one of GET /sdapi/v1/upscalers")
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    """Body of `POST /sdapi/v1/extra-single-image`."""

    image: str = Field("", description="base64 image, or a data: URL")


class ExtrasSingleImageResponse(BaseModel):
    """Answer of `POST /sdapi/v1/extra-single-image`."""

    html_info: str = Field(description="the postprocessing text, as HTML")
    image: str | None = Field(None, description="base64 PNG")


class FileData(ApiModel):
    """One image of `/extra-batch-images`."""

    data: str = Field(description="base64 image, or a data: URL")
    name: str = Field("", description="file name")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    """Body of `POST /sdapi/v1/extra-batch-images`."""

    imageList: list[FileData] = Field(description="the images")  # noqa: N815 - A1111's field name


class ExtrasBatchImagesResponse(BaseModel):
    """Answer of `POST /sdapi/v1/extra-batch-images`."""

    html_info: str
    images: list[str] = Field(default_factory=list, description="base64 PNGs")


class RealesrganItem(BaseModel):
    """One entry of `GET /sdapi/v1/realesrgan-models`."""

    name: str
    path: str | None = None
    scale: int | None = None


class ProgressState(BaseModel):
    """The job fields of `GET /sdapi/v1/progress`."""

    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    """Answer of `GET /sdapi/v1/progress`."""

    progress: float = Field(description="0..1 of the whole job")
    eta_relative: float = Field(description="estimated seconds left")
    state: ProgressState
    current_image: str | None = Field(None, description="base64 PNG preview of the current latent")
    textinfo: str | None = None
    active: bool = Field(False, description="a generation is running")


class PngInfoRequest(ApiModel):
    """Body of `POST /sdapi/v1/png-info`."""

    image: str = Field(description="base64 image, or a data: URL")


class PngInfoResponse(BaseModel):
    """Answer of `POST /sdapi/v1/png-info`."""

    info: str = Field(description="the infotext (PNG `parameters` text), empty when none")
    items: dict[str, Any] = Field(default_factory=dict, description="the image's other metadata")
    parameters: dict[str, Any] = Field(default_factory=dict, description="the infotext parsed into fields")


class SDModelItem(BaseModel):
    """One entry of `GET /sdapi/v1/sd-models`."""

    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    """One entry of `GET /sdapi/v1/samplers`."""

    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    """One entry of `GET /sdapi/v1/schedulers`."""

    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class UpscalerItem(BaseModel):
    """One entry of `GET /sdapi/v1/upscalers` (image-space upscalers)."""

    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscaleModeItem(BaseModel):
    """One entry of `GET /sdapi/v1/latent-upscale-modes`."""

    name: str


class ScriptsList(BaseModel):
    """`GET /sdapi/v1/scripts`: the Script plug-ins a request may name, per tab."""

    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    """One argument of a script (from its UI component), in `GET /sdapi/v1/script-info`."""

    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[Any] | None = None


class ScriptInfo(BaseModel):
    """One entry of `GET /sdapi/v1/script-info` (A1111's shape)."""

    name: str | None = None
    is_alwayson: bool = False
    is_img2img: bool = False
    args: list[ScriptArg] = Field(default_factory=list)


class EmbeddingsResponse(BaseModel):
    """`GET /sdapi/v1/embeddings` (textual inversion is not supported: both are empty)."""

    loaded: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """A1111's error shape: the exception type, a readable message, the offending body, the detailed errors."""

    error: str
    detail: str
    body: Any = None
    errors: Any = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "the body is not valid JSON"),
        (401, "missing or wrong credentials (with --api-auth)"),
        (413, "request body too large"),
        (422, "invalid input; `detail` says what is wrong"),
    )
}
