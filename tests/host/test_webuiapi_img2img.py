"""The `webuiapi` PyPI client (what many A1111 scripts use) against our real server: img2img plain and masked,
extra_single_image and extra_batch_images, with the images and infotexts it hands to its users."""

from __future__ import annotations

import numpy as np
import pytest
import webuiapi
from PIL import Image

from modules.host import WebUI
from modules.tiny_models import write_single_file
from modules.webui_server import ServerThread, create_app


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    webui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("webuiapi")), "--no-embedded-default",
                          "--nowebui"], load_extensions_now=False)
    write_single_file(webui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    webui.models.load("tiny.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=thread.port, sampler="Euler a", steps=3)
    finally:
        thread.stop()


INIT = noise_image(96, 64, seed=2)


def test_img2img_plain(api):
    result = api.img2img(images=[INIT], prompt="a cat", width=64, height=64, seed=9, denoising_strength=0.6,
                         batch_size=2)
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [9, 10]
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert result.parameters["denoising_strength"] == 0.6


def test_img2img_masked(api):
    mask = Image.new("L", INIT.size)
    mask.paste(255, (30, 16, 70, 48))
    result = api.img2img(images=[INIT], mask_image=mask, prompt="a cat", width=96, height=64, seed=9,
                         mask_blur=0, inpaint_full_res=False, inpainting_fill=1, denoising_strength=0.9)
    out = np.asarray(result.image, dtype=np.int16)
    original = np.asarray(INIT, dtype=np.int16)
    assert np.abs(out - original)[:10, :20].max() == 0  # outside the mask: the original
    assert np.abs(out - original)[20:44, 34:66].mean() > 5
    masked_inverted = api.img2img(images=[INIT], mask_image=mask, inpainting_mask_invert=1, prompt="a cat",
                                  width=96, height=64, seed=9, mask_blur=0, inpaint_full_res=False)
    assert "Mask mode: Inpaint not masked" in masked_inverted.info["infotexts"][0]


def test_extra_single_image(api):
    result = api.extra_single_image(image=INIT, upscaler_1="Lanczos", upscaling_resize=2)
    assert result.image.size == (192, 128)
    assert "Postprocess upscaler: Lanczos" in result.info


def test_extra_batch_images(api):
    result = api.extra_batch_images(images=[INIT, noise_image(32, 32)], upscaler_1="Nearest", upscaling_resize=1.5)
    assert [image.size for image in result.images] == [(144, 96), (48, 48)]
