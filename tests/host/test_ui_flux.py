"""The Flux UI a Forge user expects, in Chromium against the real server: the "VAE / Text Encoder" picker in the top
bar lists the files of models/VAE and models/text_encoder; picking a second Flux VAE reloads the model (the loading
log names the file), changes the image and the infotext (`Module 1: ae2`); the "Distilled CFG Scale" slider shows on
Flux dev, its value reaches the infotext, a pasted `Distilled CFG Scale: 2.5` fills it, and it hides on an SD1
model. Screenshots: `test-artifacts/flux-ui-*.png`."""

from __future__ import annotations

import io
import logging
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from modules.host import WebUI
from modules.webui_server import ServerThread, create_app
from tests.helpers import flux_factory
from tests.helpers.paths import ROOT
from tests.helpers.servers import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")]

ARTIFACTS = ROOT / "test-artifacts"
MODULE_FILES = ["VAE/ae.safetensors", "VAE/ae2.safetensors", "text_encoder/clip_l.safetensors",
                "text_encoder/t5xxl_fp16.safetensors"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("flux-ui")
    flux_factory.write_picker_models(home / "models")
    webui = WebUI.create(["--data-dir", str(home), "--no-embedded-default"])
    webui.models.load("tiny-flux-bfl.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1000})
            tab.errors = []
            tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
            tab.goto(server[0] + "/")
            tab.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            yield tab
            assert tab.errors == []
        finally:
            browser.close()


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def generate(page, prompt: str = "a photo of a red cat") -> tuple[str, np.ndarray]:
    """Fast settings, Generate, wait for the new infotext; returns it and the image the gallery shows."""
    page.fill("#txt2img_prompt textarea", prompt)
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2"),
                           ("txt2img_cfg_scale", "1"), ("txt2img_seed", "11")):
        set_number(page, elem_id, value)
    info = "#html_info_txt2img .webui-infotext"
    old = page.inner_text(info) if page.locator(info).count() else ""
    page.click("#txt2img_generate")
    page.wait_for_function("([selector, old]) => { const el = document.querySelector(selector); "
                           "return el && el.innerText.includes('Steps:') && el.innerText !== old; }",
                           arg=[info, old], timeout=120_000)
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    image = Image.open(io.BytesIO(httpx.get(src, timeout=30).content)).convert("RGB")
    return page.inner_text(info), np.asarray(image, dtype=np.int16)


def pick_module(page, name: str) -> None:
    page.locator("#setting_forge_additional_modules input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")


def test_picker_lists_the_files_and_a_second_vae_changes_the_image(page, server, caplog):
    _, webui = server
    page.locator("#setting_forge_additional_modules input").click()
    options = page.get_by_role("option")
    options.first.wait_for()
    assert [o.inner_text().strip() for o in options.all()] == MODULE_FILES
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "flux-ui-picker-open.png"))
    page.keyboard.press("Escape")

    before_info, before = generate(page)
    assert "Module 1: ae," in before_info and "Model family: Flux" in before_info
    model = webui.models.current
    with caplog.at_level(logging.INFO, logger="modules.flux_model"):
        pick_module(page, "VAE/ae2.safetensors")
        page.locator(".toast-body", has_text="uses ae2.safetensors").wait_for(timeout=60_000)
    assert re.search(r"Flux vae from \S*/VAE/ae2\.safetensors \(selected in VAE / Text Encoder\)", caplog.text)
    assert webui.options.get("forge_additional_modules") == ["VAE/ae2.safetensors"]
    assert webui.models.current is not model
    chips = page.locator("#setting_forge_additional_modules .token")
    assert [c.inner_text().strip() for c in chips.all()] == ["VAE/ae2.safetensors"]
    after_info, after = generate(page)
    assert "Module 1: ae2," in after_info
    assert np.abs(after - before).mean() > 1


def test_distilled_cfg_slider_reaches_the_infotext_and_takes_a_pasted_value(page):
    slider = page.locator("#txt2img_distilled_cfg_scale")
    assert slider.is_visible()
    assert page.input_value("#txt2img_distilled_cfg_scale input[type=number]") == "3.5"  # Forge's default
    set_number(page, "txt2img_distilled_cfg_scale", "2.5")
    info, _ = generate(page)
    assert "Distilled CFG Scale: 2.5," in info
    page.screenshot(path=str(ARTIFACTS / "flux-ui-txt2img.png"), full_page=True)

    set_number(page, "txt2img_distilled_cfg_scale", "7")
    text = ("a lighthouse\nSteps: 2, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Seed: 4, Size: 64x64, "
            "Distilled CFG Scale: 2.5, Model family: Flux")
    page.click("#tab_pnginfo-button")
    page.fill("#pnginfo_generation_info textarea", text)
    page.click("#pnginfo_send_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a lighthouse'")
    assert page.input_value("#txt2img_distilled_cfg_scale input[type=number]") == "2.5"
    assert page.locator(".toast-body.warning, .toast-body.error").count() == 0  # Flux's `Simple` is no complaint


def test_slider_hides_on_an_sd1_model_and_returns_on_flux(page, server):
    _, webui = server
    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^sd1\.safetensors")).click()
    page.wait_for_selector("#txt2img_distilled_cfg_scale", state="hidden", timeout=60_000)
    assert webui.models.current.family == "SD1"
    assert page.locator(".toast-body", has_text="Loaded sd1.safetensors").count() == 1
    assert page.locator(".toast-body.error").count() == 0
    page.screenshot(path=str(ARTIFACTS / "flux-ui-sd1.png"), full_page=True)
    info, _ = generate(page, "a castle")
    assert "Distilled CFG Scale" not in info and "Module 1" not in info

    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^tiny-flux-bfl\.safetensors")).click()
    page.wait_for_selector("#txt2img_distilled_cfg_scale", state="visible", timeout=60_000)
    assert webui.models.current.is_flux
    page.reload()  # a fresh page shows it from the start
    page.wait_for_selector("#txt2img_distilled_cfg_scale", state="visible", timeout=60_000)
