"""The img2img, Extras and PNG Info tabs of the real UI (create_app on 127.0.0.1): generation through the UI's own
endpoints (gradio_client), inpainting with an uploaded mask and with a painted one, the SD upscale script, Send to
img2img, Extras saving to outputs/extras-images, and Chromium driving the img2img tab with the Lora cards."""

from __future__ import annotations

import io
import json
import re

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from modules.host import WebUI
from modules.images import read_info_from_image
from modules.ui_img2img import editor_mask
from modules.webui_server import ServerThread, create_app
from tests.helpers.servers import CHROMIUM, CHROMIUM_ARGS

FIELDS = ["prompt", "negative_prompt", "resize_mode", "sampler_name", "scheduler", "steps", "width", "height",
          "n_iter", "batch_size", "cfg_scale", "seed", "clip_skip", "denoising_strength", "mask_blur",
          "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "styles"]


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("ui-img2img")
    webui = WebUI.create(["--data-dir", str(data)])  # the embedded default model and the demo LoRAs
    webui.models.get()
    thread = ServerThread(create_app(webui), port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def client(ui_server):
    from gradio_client import Client  # noqa: PLC0415

    return Client(ui_server[0] + "/", verbose=False, download_files=False)


def gallery_image(item) -> Image.Image:
    """The picture of a gallery entry the UI sent back (fetched from the server like the browser does)."""
    url = item["image"]["url"]
    return Image.open(io.BytesIO(httpx.get(url, timeout=30).content)).convert("RGB")


def values(**changes):
    base = {"prompt": "a castle", "negative_prompt": "", "resize_mode": "Just resize", "sampler_name": "Euler",
            "scheduler": "Automatic", "steps": 4, "width": 64, "height": 64, "n_iter": 1, "batch_size": 1,
            "cfg_scale": 7.0, "seed": 21, "clip_skip": 1, "denoising_strength": 0.75, "mask_blur": 0,
            "inpainting_mask_invert": "Inpaint masked", "inpainting_fill": "original",
            "inpaint_full_res": "Whole picture", "inpaint_full_res_padding": 32, "styles": []}
    base.update(changes)
    return [base[name] for name in FIELDS]


def file_of(tmp_path, image: Image.Image, name: str):
    from gradio_client import handle_file  # noqa: PLC0415

    path = tmp_path / name
    image.save(path)
    return handle_file(str(path))


def run_img2img(client, tmp_path, source="img2img", init=None, mask=None, script="None", **changes):
    init_file = file_of(tmp_path, init or noise_image(64, 64, seed=3), "init.png")
    upload = init_file if source == "Inpaint upload" else None
    mask_file = file_of(tmp_path, mask, "mask.png") if mask is not None else None
    return client.predict(*values(**changes), source, init_file if source == "img2img" else None, None, upload,
                          mask_file, script, 8, "Lanczos", 2.0, api_name="/img2img")


def test_img2img_tab_generates_with_the_same_infotext_as_the_api(client, tmp_path):
    gallery, info, html_info, _ = run_img2img(client, tmp_path, prompt="a castle <lora:demo_lora:0.6>")
    assert len(gallery) == 1
    infotext = json.loads(info)["infotexts"][0]
    assert infotext.startswith("a castle <lora:demo_lora:0.6>\n")
    assert "Denoising strength: 0.75" in infotext and "Seed: 21" in infotext and 'Lora hashes: "demo_lora: ' in infotext
    assert "a castle" in html_info


def test_inpaint_upload_keeps_the_original_outside_the_mask(client, tmp_path):
    init = noise_image(64, 64, seed=3)
    mask = Image.new("L", (64, 64))
    mask.paste(255, (16, 16, 48, 48))
    gallery, info, _, _ = run_img2img(client, tmp_path, source="Inpaint upload", init=init, mask=mask,
                                      inpainting_mask_invert="Inpaint not masked", inpainting_fill="latent nothing")
    infotext = json.loads(info)["infotexts"][0]
    assert "Mask mode: Inpaint not masked" in infotext and "Masked content: latent nothing" in infotext
    result = np.asarray(gallery_image(gallery[0]), dtype=np.int16)
    diff = np.abs(result - np.asarray(init, dtype=np.int16))
    assert diff[16:48, 16:48].max() == 0 and diff[:12].mean() > 5  # inverted: only the outside is repainted
    with pytest.raises(Exception, match="upload a mask too"):
        run_img2img(client, tmp_path, source="Inpaint upload", init=init)


def test_painted_mask_is_what_the_brush_covered():
    background = noise_image(32, 24)
    layer = Image.new("RGBA", (32, 24), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (4, 4, 12, 10))
    image, mask = editor_mask({"background": background, "layers": [layer], "composite": None})
    assert np.array_equal(np.asarray(image), np.asarray(background))
    expected = np.zeros((24, 32), np.uint8)
    expected[4:10, 4:12] = 255
    assert np.array_equal(np.asarray(mask), expected)
    assert editor_mask({"background": background, "layers": [Image.new("RGBA", (32, 24))]})[1] is None


def test_sd_upscale_script_from_the_tab(client, tmp_path):
    gallery, info, _, _ = run_img2img(client, tmp_path, script="SD upscale", init=noise_image(48, 48),
                                      denoising_strength=0.3)
    infotext = json.loads(info)["infotexts"][0]
    assert "SD upscale overlap: 8" in infotext and "SD upscale upscaler: Lanczos" in infotext
    assert json.loads(info)["width"] == 96


def test_bad_input_in_the_tab_is_a_message(client, tmp_path):
    with pytest.raises(Exception, match="upload an image first"):
        client.predict(*values(), "img2img", None, None, None, None, "None", 8, "Lanczos", 2.0, api_name="/img2img")


def test_png_info_sends_img2img_parameters_and_image(client, tmp_path):
    from gradio_client import handle_file  # noqa: PLC0415

    text = ("a cat\nNegative prompt: dog\nSteps: 9, Sampler: DDIM, CFG scale: 5, Seed: 8, Size: 96x64, "
            "Denoising strength: 0.4, Mask blur: 6, Inpaint area: Only masked, Masked area padding: 12, "
            "Masked content: latent noise, Mask mode: Inpaint not masked")
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", text)
    path = tmp_path / "source.png"
    Image.new("RGB", (96, 64), (10, 200, 30)).save(path, pnginfo=pnginfo)
    updates = client.predict(text, handle_file(str(path)), api_name="/send_to_img2img")
    sent = dict(zip(FIELDS, [u.get("value") if isinstance(u, dict) else u for u in updates]))
    assert (sent["prompt"], sent["negative_prompt"], sent["steps"], sent["seed"]) == ("a cat", "dog", 9, 8)
    assert (sent["width"], sent["height"], sent["denoising_strength"]) == (96, 64, 0.4)
    assert sent["mask_blur"] == 6 and sent["inpaint_full_res_padding"] == 12
    assert sent["inpaint_full_res"] == "Only masked" and sent["inpainting_fill"] == "latent noise"
    assert sent["inpainting_mask_invert"] == "Inpaint not masked"
    assert updates[len(FIELDS)]["value"] is not None  # the image goes to the img2img input


def test_extras_tab_upscales_and_saves_with_postprocessing_text(ui_server, client, tmp_path):
    from gradio_client import handle_file  # noqa: PLC0415

    _, webui = ui_server
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", "a dog\nSteps: 3, Seed: 1, Size: 40x30")
    path = tmp_path / "extras.png"
    noise_image(40, 30).save(path, pnginfo=pnginfo)
    result, _, html_info = client.predict("Single Image", handle_file(str(path)), None, "Scale by", 2.0, 512, 512,
                                          True, "Nearest", "None", 0, api_name="/extras")
    assert "Postprocess upscale by: 2" in html_info and "Postprocess upscaler: Nearest" in html_info
    saved = sorted((webui.paths.outputs_dir / "extras-images").glob("*.png"))
    assert [p.name for p in saved] == ["00000.png"]
    with Image.open(saved[0]) as image:
        assert image.size == (80, 56)
        text, items = read_info_from_image(image)
    assert text.startswith("a dog") and items["postprocessing"].startswith("Postprocess upscale by: 2")
    with pytest.raises(Exception, match=r"nope is not in the list of choices: \['None', 'Lanczos', 'Nearest'"):
        client.predict("Single Image", handle_file(str(path)), None, "Scale by", 2.0, 512, 512, True, "nope", "None",
                       0, api_name="/extras")
    second = tmp_path / "second.png"
    noise_image(16, 24).save(second)
    _, batch, _ = client.predict("Batch Process", None, [handle_file(str(path)), handle_file(str(second))],
                                 "Scale to", 2.0, 64, 64, True, "Lanczos", "None", 0, api_name="/extras")
    assert [gallery_image(item).size for item in batch] == [(64, 64), (64, 64)]
    assert len(list((webui.paths.outputs_dir / "extras-images").glob("*.png"))) == 3


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
def test_browser_img2img_tab_with_lora_cards_progress_and_gallery(ui_server, tmp_path):
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    base, _ = ui_server
    init = tmp_path / "browser-init.png"
    noise_image(64, 64, seed=9).save(init)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.get_by_role("tab", name="img2img").first.click()
            page.wait_for_selector("#img2img_prompt textarea", state="visible")
            page.click("#img2img_lora_tab-button")  # the cards are a tab beside "Generation", as in txt2img
            cards = page.locator("#img2img_lora_cards_html .lora-card")
            cards.first.wait_for(timeout=30_000)
            cards.first.click()  # a Lora card inserts its tag into this tab's prompt
            assert re.search(r"<lora:[^>]+>", page.input_value("#img2img_prompt textarea"))
            page.click("#img2img_generation_tab-button")
            page.set_input_files("#img2img_image input[type=file]", str(init))
            page.wait_for_selector("#img2img_image img", timeout=30_000)
            for elem_id, value in (("img2img_width", "64"), ("img2img_height", "64"), ("img2img_steps", "100")):
                page.fill(f"#{elem_id} input[type=number]", value)
                page.press(f"#{elem_id} input[type=number]", "Enter")
            page.evaluate("""() => {
                window.progressTexts = [];
                new MutationObserver(() => {
                    const text = document.querySelector('#img2img_progress .webui-progress-text');
                    if (text) window.progressTexts.push(text.textContent);
                }).observe(document.querySelector('#img2img_progress'),
                           {subtree: true, childList: true, characterData: true, attributes: true});
            }""")
            page.click("#img2img_generate")
            page.wait_for_selector("#img2img_gallery img", timeout=90_000)
            page.wait_for_function("document.querySelector('#html_info_img2img').innerText.includes('Denoising')")
            assert "Lora hashes" in page.inner_text("#html_info_img2img")
            texts = page.evaluate("window.progressTexts")
            assert any(re.match(r"\d+% step \d+/75", t) for t in texts), texts  # int(0.75 * 100) steps
            assert not errors, errors
        finally:
            browser.close()
