"""txt2img end to end on tiny real models: seeds, batches, samplers, clip skip, hires fix, interrupt, validation,
extra-network activation, PNG saving with infotext, and the SD1/SD2 (v-prediction)/SDXL families."""

from __future__ import annotations

import json
import re
from datetime import datetime

import numpy as np
import pytest
import torch
from PIL import Image

from modules import sampler_table, sd_samplers
from modules.extra_networks import ExtraNetwork
from modules.host import WebUI
from modules.images import read_info_from_image
from modules.infotext import parse_generation_parameters
from modules.processing import (
    ProcessingError,
    StableDiffusionProcessingTxt2Img,
    image_noise,
    process_images,
)
from modules.prompt_encoding import PromptEncoder
from tests.helpers.model_factory import write_single_file

SIZE = 64


def make_webui(root, families=("SD1",)) -> WebUI:
    webui = WebUI.create(["--data-dir", str(root), "--no-embedded-default"], load_extensions_now=False)
    for family in families:
        write_single_file(webui.paths.ckpt_dir / f"tiny-{family.lower()}.safetensors", family, seed=0,
                          v_prediction=family == "SD2")
    return webui


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    ui = make_webui(tmp_path_factory.mktemp("webui"))
    ui.models.load("tiny-sd1.safetensors")
    return ui


def request(**kwargs) -> StableDiffusionProcessingTxt2Img:
    values = {"prompt": "a photo of a cat", "negative_prompt": "blurry", "seed": 1234, "steps": 3,
              "width": SIZE, "height": SIZE, "do_not_save_samples": True}
    values.update(kwargs)
    return StableDiffusionProcessingTxt2Img(**values)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


def params_of(text: str) -> dict:
    return parse_generation_parameters(text)


def test_same_seed_is_bitwise_identical_and_other_seed_differs(webui):
    first = process_images(webui, request())
    again = process_images(webui, request())
    other = process_images(webui, request(seed=1235))
    assert first.images[0].size == (SIZE, SIZE) and first.images[0].mode == "RGB"
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert not np.array_equal(pixels(first.images[0]), pixels(other.images[0]))
    assert first.seed == 1234 and params_of(first.infotexts[0])["Seed"] == "1234"


def test_batch_and_iterations_give_consecutive_seeds(webui):
    result = process_images(webui, request(seed=100, batch_size=2, n_iter=2))
    assert len(result.images) == 4
    assert result.all_seeds == [100, 101, 102, 103]
    assert [params_of(text)["Seed"] for text in result.infotexts] == ["100", "101", "102", "103"]
    # The image of seed 102 (second iteration, first in its batch) is the single generation with seed 102 up to
    # float32 rounding (a larger UNet batch changes the matmul kernels; in float64 they are bitwise equal);
    # the neighbouring seed is far from it.
    single = pixels(process_images(webui, request(seed=102)).images[0]).astype(int)
    assert np.abs(pixels(result.images[2]).astype(int) - single).mean() < 2
    assert np.abs(pixels(result.images[3]).astype(int) - single).mean() > 8
    info = json.loads(result.js())
    assert info["all_seeds"] == [100, 101, 102, 103] and info["seed"] == 100
    assert info["sampler_name"] == "Euler a" and info["steps"] == 3 and info["width"] == SIZE
    assert len(info["infotexts"]) == 4 and info["prompt"] == "a photo of a cat"


def reference_pipeline_image(model, sampler: str, steps: int, seed: int, cfg: float) -> np.ndarray:
    """The same request through diffusers' own pipeline (its loop, CFG and decode), from our conditioning and
    our seeded noise: a cross-check of the denoising loop against the reference implementation."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline  # noqa: PLC0415

    encoder = PromptEncoder(model)
    cond, uncond = encoder.encode(["a photo of a cat"]), encoder.encode(["blurry"], is_negative=True)
    noise, _ = image_noise((4, SIZE // 8, SIZE // 8), seed)
    scheduler = sd_samplers.create_scheduler(sampler_table.find_sampler(sampler), model.scheduler_config,
                                             model.prediction_type)
    common = {"latents": noise[None], "num_inference_steps": steps, "guidance_scale": cfg, "height": SIZE,
              "width": SIZE, "output_type": "np", "prompt_embeds": cond.hidden, "negative_prompt_embeds": uncond.hidden}
    if model.is_sdxl:
        pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoders[0],
                                         text_encoder_2=model.text_encoders[1], tokenizer=model.tokenizers[0],
                                         tokenizer_2=model.tokenizers[1], unet=model.unet, scheduler=scheduler)
        out = pipe(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled, **common)
    else:
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoders[0],
                                       tokenizer=model.tokenizers[0], unet=model.unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        out = pipe(**common)
    return out.images[0] * 255.0


def assert_matches_reference(webui, sampler: str = "Euler") -> None:
    ours = process_images(webui, request(sampler_name=sampler, steps=4, seed=42, cfg_scale=5.0)).images[0]
    reference = reference_pipeline_image(webui.models.get(), sampler, 4, 42, 5.0)
    difference = np.abs(pixels(ours).astype(np.float64) - reference)
    assert difference.max() <= 1.0  # ours truncates to uint8 as A1111 does; the pipeline returns floats


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M"])
def test_loop_matches_diffusers_pipeline(webui, sampler):
    assert_matches_reference(webui, sampler)


def test_random_seed_is_resolved_and_reported(webui):
    result = process_images(webui, request(seed=-1))
    assert 0 <= result.seed < 4294967294
    assert params_of(result.infotexts[0])["Seed"] == str(result.seed)


@pytest.mark.parametrize("sampler", sampler_table.sampler_names())
def test_every_sampler_generates(webui, sampler):
    result = process_images(webui, request(sampler_name=sampler, steps=2))
    image = pixels(result.images[0])
    assert image.shape == (SIZE, SIZE, 3)
    assert image.std() > 0  # not a flat image
    assert params_of(result.infotexts[0])["Sampler"] == sampler
    again = process_images(webui, request(sampler_name=sampler, steps=2))
    assert np.array_equal(image, pixels(again.images[0])), f"{sampler} is not deterministic"


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE"])
def test_sampler_noise_is_per_image_seed(webui, sampler):
    """Samplers that add noise at each step draw it from each image's own seed: the second image of a batch is
    the single generation of its seed (up to float32 rounding of the larger UNet batch)."""
    batch = process_images(webui, request(seed=500, batch_size=2, sampler_name=sampler))
    single = process_images(webui, request(seed=501, sampler_name=sampler))
    other = process_images(webui, request(seed=502, sampler_name=sampler))
    diff = np.abs(pixels(batch.images[1]).astype(int) - pixels(single.images[0]).astype(int)).mean()
    far = np.abs(pixels(other.images[0]).astype(int) - pixels(single.images[0]).astype(int)).mean()
    assert diff < 2 < far


def test_karras_legacy_name_equals_scheduler_field(webui):
    legacy = process_images(webui, request(sampler_name="DPM++ 2M Karras", steps=4))
    split = process_images(webui, request(sampler_name="DPM++ 2M", scheduler="Karras", steps=4))
    uniform = process_images(webui, request(sampler_name="DPM++ 2M", scheduler="Uniform", steps=4))
    assert np.array_equal(pixels(legacy.images[0]), pixels(split.images[0]))
    assert not np.array_equal(pixels(split.images[0]), pixels(uniform.images[0]))
    params = params_of(split.infotexts[0])
    assert params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"


def test_euler_ancestral_follows_karras_schedule(webui):
    automatic = process_images(webui, request(sampler_name="Euler a"))
    karras = process_images(webui, request(sampler_name="Euler a", scheduler="Karras"))
    assert not np.array_equal(pixels(automatic.images[0]), pixels(karras.images[0]))
    assert karras.comments == [] and params_of(karras.infotexts[0])["Schedule type"] == "Karras"


def test_ancestral_eta_zero_is_plain_euler(webui):
    euler = process_images(webui, request(sampler_name="Euler", scheduler="Karras"))
    ancestral = process_images(webui, request(sampler_name="Euler a", scheduler="Karras"))
    eta0 = process_images(webui, request(sampler_name="Euler a", scheduler="Karras",
                                         override_settings={"eta_ancestral": 0.0}))
    assert np.abs(pixels(eta0.images[0]).astype(int) - pixels(euler.images[0]).astype(int)).max() <= 1
    assert np.abs(pixels(ancestral.images[0]).astype(int) - pixels(euler.images[0]).astype(int)).mean() > 2
    assert params_of(eta0.infotexts[0])["Eta"] == "0" and "Eta" not in ancestral.infotexts[0]


def test_unsupported_schedule_falls_back_with_comment(webui):
    result = process_images(webui, request(sampler_name="DDIM", scheduler="Karras"))
    assert result.comments == ["Schedule type Karras is not available for sampler DDIM; used Uniform"]
    assert params_of(result.infotexts[0])["Schedule type"] == "Uniform"
    uniform = process_images(webui, request(sampler_name="DDIM", scheduler="Uniform"))
    assert np.array_equal(pixels(result.images[0]), pixels(uniform.images[0]))


def test_clip_skip_changes_conditioning_and_image(webui):
    model = webui.models.get()
    skip1 = PromptEncoder(model, clip_skip=1).encode(["a photo of a cat"])
    skip2 = PromptEncoder(model, clip_skip=2).encode(["a photo of a cat"])
    assert skip1.hidden.shape == skip2.hidden.shape == (1, 77, model.text_encoders[0].config.hidden_size)
    assert (skip1.hidden - skip2.hidden).abs().max() > 1e-3
    plain = process_images(webui, request())
    skipped = process_images(webui, request(clip_skip=2))
    assert not np.array_equal(pixels(plain.images[0]), pixels(skipped.images[0]))
    assert params_of(skipped.infotexts[0])["Clip skip"] == "2"
    assert "Clip skip" not in plain.infotexts[0]


def test_override_settings_apply_and_are_restored(webui):
    result = process_images(webui, request(override_settings={"CLIP_stop_at_last_layers": 2}))
    assert params_of(result.infotexts[0])["Clip skip"] == "2"
    assert webui.options.get("CLIP_stop_at_last_layers") == 1


def test_long_prompt_and_break_make_more_chunks(webui):
    model = webui.models.get()
    encoder = PromptEncoder(model)
    long_prompt = ", ".join(["cat"] * 60)  # 119 tokens -> 2 chunks
    assert encoder.encode([long_prompt]).hidden.shape[1] == 154
    assert encoder.encode(["a cat BREAK a dog"]).hidden.shape[1] == 154
    assert encoder.encode(["a cat break a dog"]).hidden.shape[1] == 77  # only upper-case BREAK is a keyword
    weighted = encoder.encode(["a (cat:1.5)"]).hidden
    plain = encoder.encode(["a cat"]).hidden
    assert (weighted - plain).abs().max() > 1e-4
    assert torch.allclose(weighted.mean(), plain.mean(), atol=1e-5)  # "Original" emphasis keeps the mean


def test_hires_fix_upscales_and_writes_infotext(webui):
    result = process_images(webui, request(enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2,
                                           hr_upscaler="Latent (nearest)", denoising_strength=0.6,
                                           hr_prompt="a photo of a dog", hr_sampler_name="DPM++ 2M",
                                           hr_scheduler="Exponential"))
    assert result.images[0].size == (96, 96)
    params = params_of(result.infotexts[0])
    assert params["Size-1"] == "64" and params["Size-2"] == "64"  # the first-pass size, as A1111 writes
    assert params["Hires upscale"] == "1.5" and params["Hires steps"] == "2"
    assert params["Hires upscaler"] == "Latent (nearest)" and params["Denoising strength"] == "0.6"
    assert params["Hires prompt"] == "a photo of a dog" and params["Hires sampler"] == "DPM++ 2M"
    assert params["Hires schedule type"] == "Exponential"
    resized = process_images(webui, request(enable_hr=True, hr_resize_x=128, hr_resize_y=96, hr_upscaler="Lanczos"))
    assert resized.images[0].size == (128, 96)
    assert params_of(resized.infotexts[0])["Hires resize-1"] == "128"


def test_interrupt_stops_early_and_returns_what_there_is(webui):
    seen: list[tuple[int, int]] = []

    def on_step(p, step, total):
        seen.append((step, total))
        if step == 2:
            webui.state.interrupt()

    webui.callbacks.add("process_step", on_step)
    try:
        result = process_images(webui, request(steps=10, n_iter=2))
    finally:
        webui.callbacks.remove("process_step", on_step)
    assert result.interrupted
    assert seen == [(0, 10), (1, 10), (2, 10)]  # the interrupt is seen before the fourth UNet call
    assert len(result.images) == 1 and result.images[0].size == (SIZE, SIZE)
    assert not webui.state.active  # state.end() ran


def test_progress_state_and_live_preview(webui):
    observed = []

    def on_step(p, step, total):
        observed.append((webui.state.job, webui.state.sampling_steps))

    webui.callbacks.add("process_step", on_step)
    try:
        process_images(webui, request(steps=2))
    finally:
        webui.callbacks.remove("process_step", on_step)
    assert observed == [("txt2img", 2), ("txt2img", 2)]
    # The preview of the last step stays readable after the job (the state is reset at the next begin()).
    assert isinstance(webui.state.current_image, Image.Image)
    assert webui.state.current_image.size == (SIZE // 8, SIZE // 8)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 4}, "width must be an integer >= 8, got 4"),
        ({"height": 0}, "height must be an integer >= 8, got 0"),
        ({"steps": -1}, "steps must be an integer >= 1, got -1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"sampler_name": "Nope"}, "unknown sampler 'Nope'; valid samplers: DPM++ 2M, "),
        ({"denoising_strength": 1.5}, "denoising_strength must be between 0 and 1"),
        ({"sampler_name": "LCM", "steps": 60}, "sampler LCM supports at most 50 steps, got 60"),
        ({"enable_hr": True, "hr_upscaler": "ESRGAN_9x"}, "unknown hr_upscaler 'ESRGAN_9x'; valid upscalers: Latent"),
    ],
)
def test_validation_errors_are_specific(webui, changes, message):
    with pytest.raises(ProcessingError) as caught:
        process_images(webui, request(**changes))
    assert message in str(caught.value)


def test_validation_reports_every_problem_at_once(webui):
    with pytest.raises(ProcessingError) as caught:
        request(width=4, steps=-1, sampler_name="Nope").validate(webui)
    text = str(caught.value)
    assert "width" in text and "steps" in text and "Nope" in text
    assert "Euler a" in text  # the valid names are listed


class RecordingNetwork(ExtraNetwork):
    """An extra-network handler that records what it is given (a real handler on the real registry)."""

    def __init__(self, name: str):
        self.name = name
        self.calls: list[tuple[bool, list[list[str]]]] = []
        self.deactivated = 0

    def activate(self, p, params_list):
        self.calls.append((p.is_hr_pass, [params.items for params in params_list]))
        if params_list and not p.is_hr_pass:
            p.extra_generation_params[f"{self.name} seen"] = ",".join(params.items[0] for params in params_list)

    def deactivate(self, p):
        self.deactivated += 1


def test_extra_network_receives_tags_and_tags_are_not_encoded(webui):
    lora, other = RecordingNetwork("lora"), RecordingNetwork("hypernet")
    webui.extra_networks.register(lora, aliases=["lyco"])
    webui.extra_networks.register(other)
    try:
        tagged = process_images(webui, request(prompt="a photo of a cat <lora:foo:0.5> <lyco:bar:1:te=0.2>",
                                               enable_hr=True, hr_scale=1.5, hr_prompt="a photo of a cat <lora:hr:1>"))
    finally:
        webui.extra_networks.unregister("lora")
        webui.extra_networks.unregister("hypernet")
    assert lora.calls == [(False, [["foo", "0.5"], ["bar", "1", "te=0.2"]]), (True, [["hr", "1"]])]
    assert other.calls == [(False, []), (True, [])]  # unmentioned handlers are activated with an empty list
    assert lora.deactivated == 1 and other.deactivated == 1
    # The infotext keeps the prompt as typed and holds what the handler added.
    params = params_of(tagged.infotexts[0])
    assert params["Prompt"] == "a photo of a cat <lora:foo:0.5> <lyco:bar:1:te=0.2>"
    assert params["lora seen"] == "foo,bar"
    # The tags are not encoded: the same request without tags gives the same pixels (no handler changes weights).
    plain = process_images(webui, request(prompt="a photo of a cat", enable_hr=True, hr_scale=1.5,
                                          hr_prompt="a photo of a cat"))
    assert np.array_equal(pixels(tagged.images[0]), pixels(plain.images[0]))


def test_negative_prompt_tags_are_stripped_not_activated(webui):
    lora = RecordingNetwork("lora")
    webui.extra_networks.register(lora)
    try:
        tagged = process_images(webui, request(negative_prompt="blurry <lora:neg:1>"))
    finally:
        webui.extra_networks.unregister("lora")
    assert lora.calls[0][1] == []
    plain = process_images(webui, request(negative_prompt="blurry"))
    assert np.array_equal(pixels(tagged.images[0]), pixels(plain.images[0]))
    assert params_of(tagged.infotexts[0])["Negative prompt"] == "blurry <lora:neg:1>"


def test_png_is_saved_with_readable_infotext(webui):
    result = process_images(webui, request(do_not_save_samples=False, seed=777, sampler_name="Euler",
                                           prompt="a cat, (sitting:1.2)\nsecond line", batch_size=2))
    assert len(result.saved_paths) == 2
    folder = webui.paths.outputs_dir / "txt2img-images" / datetime.now().strftime("%Y-%m-%d")
    assert result.saved_paths[0].parent == folder
    assert re.fullmatch(r"\d{5}-777\.png", result.saved_paths[0].name)
    assert re.fullmatch(r"\d{5}-778\.png", result.saved_paths[1].name)
    first_number = int(result.saved_paths[0].name[:5])
    assert int(result.saved_paths[1].name[:5]) == first_number + 1
    with Image.open(result.saved_paths[1]) as image:
        text, other = read_info_from_image(image)
        assert np.array_equal(pixels(image.convert("RGB")), pixels(result.images[1]))
    assert text == result.infotexts[1]
    params = parse_generation_parameters(text)
    assert params["Prompt"] == "a cat, (sitting:1.2)\nsecond line"
    assert params["Negative prompt"] == "blurry"
    assert params["Seed"] == "778" and params["Sampler"] == "Euler"
    assert params["Size-1"] == "64" and params["Size-2"] == "64" and params["Steps"] == "3"
    assert params["Model"] == "tiny-sd1" and len(params["Model hash"]) == 10


def test_samples_save_option_off_saves_nothing(webui):
    result = process_images(webui, request(do_not_save_samples=False, override_settings={"samples_save": False}))
    assert result.saved_paths == []


def test_variation_seed_changes_image_and_is_recorded(webui):
    base = process_images(webui, request())
    varied = process_images(webui, request(subseed=99, subseed_strength=0.5))
    assert not np.array_equal(pixels(base.images[0]), pixels(varied.images[0]))
    params = params_of(varied.infotexts[0])
    assert params["Variation seed"] == "99" and params["Variation seed strength"] == "0.5"
    resized = process_images(webui, request(seed_resize_from_w=32, seed_resize_from_h=32))
    assert params_of(resized.infotexts[0])["Seed resize from-1"] == "32"


def test_sd2_v_prediction_and_sdxl_generate(tmp_path):
    ui = make_webui(tmp_path, families=("SD2", "SDXL"))
    sd2 = ui.models.load("tiny-sd2.safetensors")
    assert sd2.prediction_type == "v_prediction"
    sd2_result = process_images(ui, request(sampler_name="DPM++ 2M", steps=3))
    assert_matches_reference(ui)  # v-prediction through the same loop as diffusers' pipeline
    # SD2 uses the penultimate OpenCLIP layer through the final norm (A1111's "penultimate" layer).
    ids = torch.tensor([[49406, 320, 2368, 49407] + [0] * 73])
    with torch.no_grad():
        hidden = sd2.text_encoders[0](input_ids=ids, output_hidden_states=True).hidden_states[-2]
        expected = sd2.text_encoders[0].final_layer_norm(hidden)
    assert torch.allclose(PromptEncoder(sd2).encode(["a cat"]).hidden, expected, atol=1e-5)
    # A per-request checkpoint override (A1111's override_settings) switches to SDXL and back afterwards.
    sdxl_result = process_images(ui, request(steps=3, enable_hr=True, hr_scale=1.5, hr_second_pass_steps=1,
                                             override_settings={"sd_model_checkpoint": "tiny-sdxl.safetensors"}))
    assert ui.models.current.checkpoint.name == "tiny-sd2.safetensors"
    assert params_of(sd2_result.infotexts[0])["Model"] == "tiny-sd2"
    assert params_of(sdxl_result.infotexts[0])["Model"] == "tiny-sdxl"
    assert sdxl_result.images[0].size == (96, 96)
    for image in (sd2_result.images[0], sdxl_result.images[0]):
        assert pixels(image).std() > 0
    sdxl = ui.models.load("tiny-sdxl.safetensors")
    assert_matches_reference(ui)  # pooled embeddings and size conditioning as diffusers' SDXL pipeline
    cond = PromptEncoder(sdxl).encode(["a photo of a cat"])
    widths = sum(int(encoder.config.hidden_size) for encoder in sdxl.text_encoders)
    assert cond.hidden.shape == (1, 77, widths)
    assert cond.pooled is not None and cond.pooled.shape == (1, sdxl.text_encoders[1].config.projection_dim)
    empty = PromptEncoder(sdxl).encode([""])
    zero = PromptEncoder(sdxl).encode([""], is_negative=True)  # SDXL: an empty negative prompt is all zeros
    assert empty.hidden.abs().max() > 0 and zero.hidden.abs().max() == 0 and zero.pooled.abs().max() == 0
