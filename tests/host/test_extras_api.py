"""img2img, inpainting, SD upscale and Extras over real HTTP (uvicorn on 127.0.0.1): A1111's request and response
shapes, base64 with and without a data: URL prefix, `include_init_images`, upscaler listings, and bad input (a
non-image init image or mask, a 20000x20000 request, an unknown upscaler, face restoration) answered 422 in
A1111's error shape while the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.api.api import img2img_params_from_infotext
from modules.host import WebUI
from modules.infotext import parse_generation_parameters
from modules.tiny_models import write_single_file
from modules.webui_server import ServerThread, create_app
from tests.host.test_upscalers import tiny_esrgan_state_dict

ERROR_KEYS = {"error", "detail", "body", "errors"}


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def b64(image: Image.Image, data_url: bool = True) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{text}" if data_url else text


def png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "PNG"
    return image


INIT = noise_image(96, 96, seed=1)
MASK = Image.new("L", (96, 96))
MASK.paste(255, (24, 24, 72, 60))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("extras-api")
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--nowebui"], load_extensions_now=False)
    write_single_file(webui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    for folder, name, seed in (("ESRGAN", "4x_tiny.safetensors", 1), ("RealESRGAN", "RealESRGAN_x4tiny.pth", 2)):
        (webui.paths.models_dir / folder).mkdir(parents=True, exist_ok=True)
        path = webui.paths.models_dir / folder / name
        if name.endswith(".pth"):
            torch.save(tiny_esrgan_state_dict(seed=seed), path)
        else:
            save_file(tiny_esrgan_state_dict(seed=seed), str(path))
    webui.models.load("tiny.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=300) as c:
        yield c


BASE = {"prompt": "example prompt", "negative_prompt": "", "init_images": [b64(INIT)], "width": 64, "height": 64,
        "steps": 3, "sampler_index": "Euler a", "seed": 5, "denoising_strength": 0.75, "cfg_scale": 7, "eta": 0,
        "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": False, "resize_mode": 0, "restore_faces": False,
        "tiling": False, "override_settings": {}, "styles": [], "s_churn": 0, "s_noise": 1}


def img2img(client, **body) -> dict:
    response = client.post("/sdapi/v1/img2img", json={**BASE, **body})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == ERROR_KEYS
    for word in words:
        assert word in payload["detail"]
    return payload


def test_img2img_answers_a1111_shape_with_infotext(client):
    data = img2img(client)
    assert set(data) == {"images", "parameters", "info"}
    image = png(data["images"][0])
    assert image.size == (64, 64)
    info = json.loads(data["info"])
    assert info["seed"] == 5 and info["denoising_strength"] == 0.75
    assert "Denoising strength: 0.75" in image.info["parameters"]
    assert data["parameters"]["init_images"] is None and data["parameters"]["prompt"] == "example prompt"


def test_plain_base64_and_data_url_give_the_same_image(client):
    a = img2img(client, init_images=[b64(INIT, data_url=False)])
    b = img2img(client)
    assert np.array_equal(np.asarray(png(a["images"][0])), np.asarray(png(b["images"][0])))


def test_include_init_images_echoes_them(client):
    data = img2img(client, include_init_images=True, mask=b64(MASK))
    assert data["parameters"]["init_images"] == [b64(INIT)] and data["parameters"]["mask"] == b64(MASK)


def test_masked_and_inverted_inpainting(client):
    masked = png(img2img(client, mask=b64(MASK), mask_blur=0)["images"][0])
    inverted = png(img2img(client, mask=b64(MASK), mask_blur=0, inpainting_mask_invert=1)["images"][0])
    original = np.asarray(INIT.resize((64, 64), Image.Resampling.LANCZOS), dtype=np.int16)
    m, i = np.asarray(masked, dtype=np.int16), np.asarray(inverted, dtype=np.int16)
    assert np.abs(m - original)[:10, :10].max() == 0 and np.abs(m - original)[20:36, 20:44].mean() > 5
    assert np.abs(i - original)[20:36, 20:44].max() == 0 and np.abs(i - original)[:10, :10].mean() > 5
    assert "Mask mode: Inpaint not masked" in inverted.info["parameters"]


def test_batch_and_seeds_as_txt2img(client):
    data = img2img(client, batch_size=2, n_iter=2, seed=40)
    assert len(data["images"]) == 4
    assert json.loads(data["info"])["all_seeds"] == [40, 41, 42, 43]


def test_sd_upscale_script(client):
    data = img2img(client, script_name="sd upscale", script_args=["", 8, "Lanczos", 2.0], denoising_strength=0.3)
    image = png(data["images"][0])
    assert image.size == (192, 192)
    assert "SD upscale upscaler: Lanczos" in image.info["parameters"]
    by_index = img2img(client, script_name="SD upscale", script_args=["", 8, 3, 1.0], denoising_strength=0.3)
    assert "SD upscale upscaler: 4x_tiny" in png(by_index["images"][0]).info["parameters"]


def test_upscaler_listings(server, client):
    names = [item["name"] for item in client.get("/sdapi/v1/upscalers").json()]
    assert names == ["None", "Lanczos", "Nearest", "4x_tiny", "RealESRGAN_x4tiny"]
    tiny = client.get("/sdapi/v1/upscalers").json()[3]
    assert tiny["model_name"] == "4x_tiny" and tiny["scale"] == 4 and tiny["model_path"].endswith("4x_tiny.safetensors")
    realesrgan = client.get("/sdapi/v1/realesrgan-models").json()
    assert [(m["name"], m["scale"]) for m in realesrgan] == [("RealESRGAN_x4tiny", 4)]
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "sd upscale" in scripts["img2img"] and "sd upscale" not in scripts["txt2img"]
    _, webui = server
    late = webui.paths.models_dir / "SwinIR" / "2x_late.safetensors"  # dropped in while the server runs
    late.parent.mkdir(exist_ok=True)
    save_file(tiny_esrgan_state_dict(seed=4), str(late))
    try:
        assert "2x_late" in [item["name"] for item in client.get("/sdapi/v1/upscalers").json()]
    finally:
        late.unlink()
        webui.upscalers.refresh()


def test_extra_single_image(client):
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": b64(INIT), "resize_mode": 0, "upscaling_resize": 2, "upscaler_1": "4x_tiny", "upscaler_2": "Lanczos",
        "extras_upscaler_2_visibility": 0.5, "gfpgan_visibility": 0, "codeformer_visibility": 0})
    assert response.status_code == 200, response.text
    data = response.json()
    assert png(data["image"]).size == (192, 192)
    assert "Postprocess upscale by: 2" in data["html_info"] and "Postprocess upscaler: 4x_tiny" in data["html_info"]
    plain = client.post("/sdapi/v1/extra-single-image", json={"image": b64(INIT)}).json()  # upscaler None
    assert np.array_equal(np.asarray(png(plain["image"])), np.asarray(INIT))
    to_size = client.post("/sdapi/v1/extra-single-image", json={
        "image": b64(INIT), "resize_mode": 1, "upscaling_resize_w": 128, "upscaling_resize_h": 100,
        "upscaling_crop": True, "upscaler_1": "Lanczos"}).json()
    assert png(to_size["image"]).size == (128, 100)


def test_extra_batch_images(client):
    response = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": b64(INIT), "name": "a.png"}, {"data": b64(noise_image(40, 30), False), "name": "b"}],
        "upscaling_resize": 2, "upscaler_1": "Nearest"})
    assert response.status_code == 200, response.text
    sizes = [png(text).size for text in response.json()["images"]]
    assert sizes == [(192, 192), (80, 56)]  # targets floored to multiples of 8, as A1111


@pytest.mark.parametrize(("route", "body", "words"), [
    ("img2img", {"init_images": ["this is not base64 of an image"]}, ["init_images[0]", "not a valid"]),
    ("img2img", {"init_images": [b64(INIT), "AAAA"], "batch_size": 2}, ["init_images[1]"]),
    ("img2img", {"mask": base64.b64encode(b"GIF89a nonsense").decode()}, ["mask", "not a valid"]),
    ("img2img", {"init_images": []}, ["init_images", "at least one"]),
    ("img2img", {"mask": b64(MASK), "latent_mask": "bm90IGFuIGltYWdl"}, ["latent_mask", "not a valid"]),
    ("img2img", {"script_name": "sd upscale", "script_args": ["", 8, "ESRGAN_4x", 2]},
     ["unknown upscaler 'ESRGAN_4x'", "Lanczos"]),
    ("img2img", {"script_name": "no such script"}, ["no such script"]),
    ("extra-single-image", {"image": b64(INIT), "upscaler_1": "ESRGAN_4x"},
     ["upscaler_1", "unknown upscaler 'ESRGAN_4x'", "None, Lanczos, Nearest, 4x_tiny"]),
    ("extra-single-image", {"image": b64(INIT), "codeformer_visibility": 0.5}, ["no face restorer is installed"]),
    ("extra-single-image", {"image": b64(noise_image(1100, 8)), "upscaler_1": "Lanczos", "upscaling_resize": 8},
     ["8800x64 is outside 1..8192"]),
    ("extra-single-image", {"image": "data:image/png;base64,"}, ["image"]),
])
def test_bad_input_is_422_naming_the_field_and_the_server_keeps_serving(client, route, body, words):
    full = {**BASE, **body} if route == "img2img" else body
    assert_error(client.post(f"/sdapi/v1/{route}", json=full), 422, *words)
    assert client.get("/sdapi/v1/upscalers").status_code == 200


def test_20000_pixel_requests_are_refused(client):
    assert_error(client.post("/sdapi/v1/img2img", json={**BASE, "width": 20000, "height": 20000}), 422, "width")
    assert_error(client.post("/sdapi/v1/extra-single-image", json={
        "image": b64(INIT), "resize_mode": 1, "upscaling_resize_w": 20000, "upscaling_resize_h": 20000,
        "upscaler_1": "Lanczos"}), 422, "upscaling_resize_w", "8192")
    huge = Image.new("L", (20000, 16))
    assert_error(client.post("/sdapi/v1/img2img", json={**BASE, "init_images": [b64(huge)]}), 422,
                 "init_images[0]", "20000x16", "8192")
    assert img2img(client)["images"]


def test_saved_img2img_images_and_png_info_round_trip(server, client):
    _, webui = server
    data = img2img(client, save_images=True, mask=b64(MASK), inpaint_full_res=True, inpaint_full_res_padding=8,
                   inpainting_fill=2)
    folder = webui.paths.outputs_dir / "img2img-images" / datetime.now().strftime("%Y-%m-%d")
    saved = sorted(folder.glob("*.png"))
    assert saved
    with Image.open(saved[-1]) as image:
        text = image.info["parameters"]
    assert text == png(data["images"][0]).info["parameters"]
    params = client.post("/sdapi/v1/png-info", json={"image": data["images"][0]}).json()["parameters"]
    assert params["Denoising strength"] == "0.75" and params["Mask blur"] == "4"
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "8"
    assert params["Masked content"] == "latent noise"
    # a body with the images and the infotext only: the infotext fills every other field (A1111 1.8)
    again = client.post("/sdapi/v1/img2img", json={"init_images": [b64(INIT)], "mask": b64(MASK), "infotext": text})
    assert again.status_code == 200, again.text
    again = again.json()
    assert np.array_equal(np.asarray(png(again["images"][0])), np.asarray(png(data["images"][0])))


def test_infotext_keys_of_img2img_map_to_request_fields():
    written = parse_generation_parameters("a cat\nSteps: 4, Seed: 1, Size: 64x64, Denoising strength: 0.5, "
                                          "Mask blur: 3, Masked content: latent nothing, Mask mode: Inpaint not masked, "
                                          "Noise multiplier: 0.9")
    assert img2img_params_from_infotext(written) == {
        "mask_blur": "3", "initial_noise_multiplier": "0.9", "inpaint_full_res": False, "inpainting_fill": 3,
        "inpainting_mask_invert": 1}
    # absent keys are A1111's unwritten defaults: whole picture, original content, inpaint masked
    defaults = img2img_params_from_infotext(parse_generation_parameters("a\nSteps: 4, Seed: 1, Mask blur: 4"))
    assert (defaults["inpaint_full_res"], defaults["inpainting_fill"], defaults["inpainting_mask_invert"]) == (False, 1, 0)
    assert img2img_params_from_infotext(parse_generation_parameters("a\nSteps: 4, Seed: 1, Size: 8x8")) == {}
