"""img2img on tiny real models: denoising strength, A1111's step count, seeds and batches as txt2img, resize modes,
LoRA tags through the same processing path, infotext, saving to outputs/img2img-images/DATE, SD upscale tiles."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from modules import sd_upscale
from modules.host import WebUI
from modules.images import read_info_from_image
from modules.img2img import StableDiffusionProcessingImg2Img
from modules.processing import ProcessingError, StableDiffusionProcessingTxt2Img, process_images
from modules.resize import resize_image
from tests.helpers.model_factory import write_single_file


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def smooth_image(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return Image.fromarray(np.concatenate([np.broadcast_to(x, (height, width, 1)), np.broadcast_to(y, (height, width, 1)),
                                           np.full((height, width, 1), 128.0)], axis=2).astype(np.uint8))


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    ui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("i2i")), "--no-embedded-default"],
                      load_extensions_now=False)
    write_single_file(ui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    ui.models.load("tiny.safetensors")
    return ui


def img2img(webui, **kwargs):
    values = {"prompt": "a cat", "seed": 7, "steps": 4, "width": 64, "height": 64, "sampler_name": "Euler",
              "init_images": [smooth_image(64, 64)], "do_not_save_samples": True}
    values.update(kwargs)
    p = StableDiffusionProcessingImg2Img(**values)
    return process_images(webui, p), p


def px(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_img2img_is_the_txt2img_processing_with_init_images():
    assert issubclass(StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img)
    assert StableDiffusionProcessingImg2Img.mode == "img2img"


def test_denoising_strength_sets_how_far_from_the_init_image(webui):
    init = smooth_image(64, 64)
    low, _ = img2img(webui, denoising_strength=0.05, init_images=[init])
    high, _ = img2img(webui, denoising_strength=1.0, init_images=[init])
    zero, _ = img2img(webui, denoising_strength=0.0, init_images=[init])
    distance = {name: np.abs(px(r.images[0]) - px(init)).mean() for name, r in
                (("low", low), ("high", high), ("zero", zero))}
    assert distance["zero"] <= distance["low"] < distance["high"]
    assert "Denoising strength: 0.05" in low.infotexts[0]
    assert low.denoising_strength == 0.05


def test_step_count_is_a1111s(webui):
    seen: list[int] = []

    def record(p, step, total):
        seen.append(total)

    webui.callbacks.add("process_step", record)
    try:
        img2img(webui, steps=20, denoising_strength=0.75)
        img2img(webui, steps=3, denoising_strength=0.75)
    finally:
        webui.callbacks.remove("process_step", record)
    assert seen[0] == 15 and seen[-1] == 2  # int(0.75 * 20), int(0.75 * 3)


def test_seeds_and_batches_as_txt2img(webui):
    first, _ = img2img(webui, seed=100, batch_size=2, n_iter=2)
    assert [int(t.split("Seed: ")[1].split(",")[0]) for t in first.infotexts] == [100, 101, 102, 103]
    again, _ = img2img(webui, seed=101)
    # the same seed alone gives the same picture as inside the batch (batched float sums differ in the last bits)
    assert np.abs(px(again.images[0]) - px(first.images[1])).max() <= 2
    other, _ = img2img(webui, seed=5)
    assert np.abs(px(other.images[0]) - px(again.images[0])).max() > 0
    two_inits, p = img2img(webui, init_images=[smooth_image(64, 64), noise_image(64, 64)], batch_size=4)
    assert p.batch_size == 2 and len(two_inits.images) == 2
    with pytest.raises(ProcessingError, match="bad number of images passed: 3; expecting 2 or less"):
        img2img(webui, init_images=[noise_image(8, 8)] * 3, batch_size=2)


def test_resize_modes_geometry():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 100))  # a blue band on the left edge
    stretched = resize_image(0, wide, 64, 64)
    assert stretched.size == (64, 64) and stretched.getpixel((2, 32))[2] > 200
    cropped = np.asarray(resize_image(1, wide, 64, 64))
    assert cropped.shape == (64, 64, 3) and cropped[32, 2, 0] > 200  # the blue edge is cropped away
    filled = np.asarray(resize_image(2, wide, 64, 64))
    assert filled.shape == (64, 64, 3)
    assert filled[2, 32, 0] > 200 and filled[62, 32, 0] > 200  # the bands above and below repeat the edge rows


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_every_resize_mode_gives_the_requested_size(webui, mode):
    result, _ = img2img(webui, resize_mode=mode, init_images=[noise_image(96, 72)], width=64, height=48)
    assert result.images[0].size == (64, 48)


def test_saved_to_dated_img2img_folder_with_infotext(webui):
    previous = webui.options.get("samples_save")
    try:
        result, _ = img2img(webui, do_not_save_samples=False)
    finally:
        webui.options.set("samples_save", previous, save=False)
    path = result.saved_paths[0]
    assert path.parent == webui.paths.outputs_dir / "img2img-images" / datetime.now().strftime("%Y-%m-%d")
    with Image.open(path) as saved:
        text, _ = read_info_from_image(saved)
    assert text == result.infotexts[0] and "Denoising strength: 0.75" in text


def test_sd_upscale_splits_blends_and_records_its_settings(webui):
    init = smooth_image(48, 48)
    p = StableDiffusionProcessingImg2Img(prompt="a cat", seed=3, steps=2, width=64, height=64, init_images=[init],
                                         denoising_strength=0.3, do_not_save_samples=True, batch_size=2)
    p.validate(webui)
    result = sd_upscale.run(webui, p, 16, "Lanczos", 2.0)
    assert result.images[0].size == (96, 96)
    text = result.infotexts[0]
    assert "SD upscale overlap: 16" in text and "SD upscale upscaler: Lanczos" in text
    grid = sd_upscale.split_grid(noise_image(96, 96), 64, 64, 16)
    assert [(row.y, [t.x for t in row.tiles]) for row in grid.rows] == [(0, [0, 32]), (32, [0, 32])]
    image = noise_image(96, 96, seed=4)
    assert np.array_equal(np.asarray(sd_upscale.combine_grid(sd_upscale.split_grid(image, 64, 64, 16))),
                          np.asarray(image))  # tiles of the same picture blend back into it
    with pytest.raises(ProcessingError, match="sd upscale: unknown upscaler 'ESRGAN_4x'"):
        sd_upscale.run(webui, p, 16, "ESRGAN_4x", 2.0)
    assert sd_upscale.parse_args(["", 8, "Lanczos", 2.0]) == (8, "Lanczos", 2.0)
    with pytest.raises(ProcessingError, match=r"script_args\[3\]"):
        sd_upscale.parse_args(["", 8, 1, 50])


def test_lora_tags_work_in_img2img_as_in_txt2img(tmp_path):
    webui = WebUI.create(["--data-dir", str(tmp_path)])
    webui.models.get()
    engine = webui.services["lora"]
    plain, _ = img2img(webui, prompt="a cat")
    tagged, p = img2img(webui, prompt="a cat <lora:demo_lora:0.8:lbw=1,0,1,0,1,0,1,0,1,0,1,0,1,0,1,0,1>")
    assert np.abs(px(plain.images[0]) - px(tagged.images[0])).max() > 0
    shorthash = engine.registry.find("demo_lora").shorthash
    assert f'Lora hashes: "demo_lora: {shorthash}"' in tagged.infotexts[0]
    assert p.extra_network_data["lora"][0].items[0] == "demo_lora"
    whole, _ = img2img(webui, prompt="a cat <lora:demo_lora:0.8>")
    scheduled, _ = img2img(webui, prompt="a cat <lora:demo_lora:0.8:stop=1>")  # only the first of 3 steps
    assert np.abs(px(scheduled.images[0]) - px(plain.images[0])).max() > 0
    assert np.abs(px(scheduled.images[0]) - px(whole.images[0])).max() > 0
    back, _ = img2img(webui, prompt="a cat")
    assert np.array_equal(px(back.images[0]), px(plain.images[0]))


@pytest.mark.parametrize("family", ["SD2", "SDXL"])
def test_img2img_and_inpainting_on_other_families(tmp_path, family):
    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"], load_extensions_now=False)
    write_single_file(webui.paths.ckpt_dir / "tiny.safetensors", family, seed=0, v_prediction=family == "SD2")
    webui.models.load("tiny.safetensors")
    init = noise_image(64, 64, seed=2)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    plain, _ = img2img(webui, init_images=[init])
    masked, _ = img2img(webui, init_images=[init], mask=mask, mask_blur=0, inpaint_full_res=False,
                        denoising_strength=0.9)
    assert plain.images[0].size == masked.images[0].size == (64, 64)
    diff = np.abs(px(masked.images[0]) - px(init))
    assert diff[:16].max() == 0 and diff[16:48, 16:48].mean() > 5
