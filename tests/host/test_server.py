"""The whole server: `python launch.py` in a subprocess, and the full Gradio UI served by `create_app`.

* `launch.py --port P --data-dir TMP` on a fresh folder writes the embedded tiny checkpoint, listens on
  127.0.0.1 only, serves the UI page and generates through `POST /sdapi/v1/txt2img`.
* The UI app (in a thread): the page links the host's and extensions' JavaScript/CSS, the Gradio config has the
  A1111 element ids, extra-network pages appear as tabs, and routes that extensions add under `/sdapi/` after the
  UI is mounted at `/` are reachable (and need the API credentials).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from PIL import Image, PngImagePlugin

from modules.host import WebUI
from modules.tiny_models import write_single_file
from modules.ui import extra_network_pages
from modules.webui_server import ServerThread, bind_host, create_app, parse_api_auth
from tests.helpers.servers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    free_port,
    listening_addresses,
    stop_servers,
    wait_until_up,
)


class CardsPage:
    """A minimal extra-networks page, as an extension would register it."""

    title = "Cards"
    name = "cards"

    def __init__(self) -> None:
        self.refreshed = 0

    def create_html(self, tabname: str) -> str:
        return f"<div class='card' data-tab='{tabname}'>card-count-{self.refreshed}</div>"

    def refresh(self) -> None:
        self.refreshed += 1


UI_AUTH = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("ui")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=3)
    (data / "models" / "Stable-diffusion" / "broken.safetensors").write_bytes(b"not a checkpoint" * 8)
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--api-auth", "u:p"])
    webui.models.get()
    page = CardsPage()
    extra_network_pages(webui).append(page)
    webui.callbacks.add("app_started", lambda w, app: app.add_api_route(
        "/sdapi/v1/late-route", lambda: {"late": True}, methods=["GET"]))
    webui.callbacks.add("app_started", lambda w, app: app.add_api_route(
        "/ext/hello", lambda: {"hello": True}, methods=["GET"]))
    app = create_app(webui)
    thread = ServerThread(app, port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui, page
    finally:
        thread.stop()


def _components(base: str) -> dict[str, dict]:
    config = httpx.get(base + "/config", timeout=30).json()
    return {c["props"]["elem_id"]: c for c in config["components"] if c.get("props", {}).get("elem_id")}


def test_ui_has_a1111_elements_settings_and_extra_network_tabs(ui_server):
    base, webui, page = ui_server
    components = _components(base)
    for elem_id in ("txt2img_prompt", "txt2img_neg_prompt", "txt2img_generate", "txt2img_interrupt",
                    "txt2img_sampling", "txt2img_steps", "txt2img_cfg_scale", "txt2img_width", "txt2img_height",
                    "txt2img_seed", "txt2img_batch_count", "txt2img_batch_size", "txt2img_clip_skip",
                    "txt2img_enable_hr", "txt2img_gallery", "html_info_txt2img", "setting_sd_model_checkpoint",
                    "pnginfo_image", "pnginfo_send_txt2img", "settings_submit", "txt2img_progress",
                    "txt2img_cards_cards_html", "txt2img_cards_extra_refresh"):
        assert elem_id in components, elem_id
    checkpoint = components["setting_sd_model_checkpoint"]["props"]
    assert checkpoint["value"] == webui.models.current.checkpoint.title
    samplers = [c[0] for c in components["txt2img_sampling"]["props"]["choices"]]
    assert "Euler a" in samplers and "DPM++ 2M" in samplers
    # one settings control per registered option (except the checkpoint, which sits at the top, and A1111's
    # "Hidden options", which A1111 shows nowhere)
    for key, info in webui.options.infos.items():
        if key != "sd_model_checkpoint" and info.section != "Hidden options":
            assert f"setting_{key}" in components, key
    assert "setting_sd_checkpoint_hash" not in components and "txt2img_skip" in components
    assert components["setting_samples_save"]["type"] == "checkbox"
    assert components["setting_CLIP_stop_at_last_layers"]["type"] == "slider"
    assert components["setting_samples_format"]["type"] == "dropdown"


def test_ui_page_serves_host_and_extension_assets(ui_server):
    base, webui, _ = ui_server
    page = httpx.get(base + "/", timeout=30)
    assert page.status_code == 200
    assert "/webui-assets/host/javascript/ui.js" in page.text and "/webui-assets/host/style.css" in page.text
    for ext in webui.extensions:
        for script in ext.javascript_files:
            url = f"/webui-assets/ext/{ext.name}/javascript/{script.name}"
            assert url in page.text
            assert httpx.get(base + url, timeout=30).text == script.read_text()
    scripts = re.findall(r'/webui-assets/[^"?]+\.js', page.text)
    assert scripts[0] == "/webui-assets/host/javascript/ui.js"  # the helpers other scripts use load first
    css = httpx.get(base + "/webui-assets/host/style.css", timeout=30)
    assert css.status_code == 200 and ".webui-progress" in css.text
    assert httpx.get(base + "/webui-assets/../../etc/passwd", timeout=30).status_code == 404
    assert httpx.get(base + "/webui-assets/host/pyproject.toml", timeout=30).status_code == 404


def test_routes_added_after_the_ui_is_mounted_are_reachable_and_protected(ui_server):
    base, _, _ = ui_server
    assert httpx.get(base + "/ext/hello", timeout=30).json() == {"hello": True}
    assert httpx.get(base + "/sdapi/v1/late-route", timeout=30).status_code == 401
    assert httpx.get(base + "/sdapi/v1/late-route", auth=("u", "p"), timeout=30).json() == {"late": True}
    progress = httpx.get(base + "/internal/progress", timeout=30)  # the UI's progress bar, outside /sdapi/
    assert progress.status_code == 200 and progress.json()["progress"] == 0


def test_extra_network_refresh_and_ui_generation_through_gradio(ui_server):
    from gradio_client import Client  # noqa: PLC0415

    base, webui, page = ui_server
    assert "card-count-0" in httpx.get(base + "/", timeout=30).text  # the page's first render (reads stay open)
    anonymous = Client(base + "/", verbose=False, download_files=False)
    with pytest.raises(Exception, match="401"):  # --api-auth covers the Gradio API's calls too (they write, generate)
        anonymous.predict(api_name="/txt2img_cards_refresh")
    assert page.refreshed == 0
    client = Client(base + "/", verbose=False, download_files=False, headers=UI_AUTH)
    html_after = client.predict(api_name="/txt2img_cards_refresh")
    assert page.refreshed == 1 and "card-count-1" in html_after

    values = {"prompt": "ui castle", "negative_prompt": "fog", "sampler_name": "DDIM", "scheduler": "Automatic",
              "steps": 2, "width": 64, "height": 64, "n_iter": 1, "batch_size": 1, "cfg_scale": 6.0, "seed": 31,
              "clip_skip": 1, "enable_hr": False, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
              "denoising_strength": 0.7, "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0,
              "hr_sampler_name": "Use same sampler", "hr_prompt": "", "hr_negative_prompt": "", "styles": []}
    gallery, info, html_info, _ = client.predict(*values.values(), api_name="/txt2img")
    assert len(gallery) == 1
    infotext = json.loads(info)["infotexts"][0]
    assert infotext.startswith("ui castle\nNegative prompt: fog\n") and "Seed: 31" in infotext
    assert "Sampler: DDIM" in infotext and "CFG scale: 6," in infotext
    assert "ui castle" in html_info
    _, floored, _, _ = client.predict(*{**values, "width": 100}.values(), api_name="/txt2img")
    assert json.loads(floored)["width"] == 96  # floored to a multiple of 8, as A1111

    result: dict = {}  # the Interrupt button stops a generation started elsewhere (here: through the API)
    thread = threading.Thread(target=lambda: result.update(httpx.post(
        base + "/sdapi/v1/txt2img", auth=("u", "p"), timeout=120,
        json={"prompt": "long", "steps": 400, "width": 128, "height": 128}).json()))
    thread.start()
    deadline = time.monotonic() + 60
    while webui.state.sampling_step < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    client.predict(api_name="/interrupt")
    thread.join(60)
    assert json.loads(result["info"])["interrupted"] is True
    assert httpx.get(base + "/internal/progress", timeout=30).status_code == 200  # still serving

    iterations: list[int] = []  # the Skip button ends the current batch; the next one runs in full
    webui.callbacks.add("process_step", lambda p, step, total: iterations.append(p.iteration))
    thread = threading.Thread(target=lambda: result.update(httpx.post(
        base + "/sdapi/v1/txt2img", auth=("u", "p"), timeout=120,
        json={"prompt": "skip", "steps": 100, "n_iter": 2, "width": 64, "height": 64}).json()))
    thread.start()
    deadline = time.monotonic() + 60
    while len(iterations) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    client.predict(api_name="/skip")
    thread.join(120)
    assert iterations.count(0) < 100 and iterations.count(1) == 100
    assert len(result["images"]) == 2 and json.loads(result["info"])["interrupted"] is False


def test_png_info_tab_sends_parameters_to_txt2img_and_checkpoint_picker_survives_bad_file(ui_server, tmp_path):
    from gradio_client import Client, handle_file  # noqa: PLC0415

    base, webui, _ = ui_server
    client = Client(base + "/", verbose=False, download_files=False, headers=UI_AUTH)
    lora_hash = []
    webui.callbacks.add("infotext_pasted", lambda text, params: lora_hash.append(params.get("Lora hashes")))
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", "a cat <lora:x:0.5>\nNegative prompt: dog\nSteps: 7, Sampler: DDIM, CFG scale: 4.5, "
                                   'Seed: 77, Size: 128x96, Clip skip: 2, Hires upscale: 1.5, Denoising strength: 0.4, '
                                   'Lora hashes: "x: 0123456789ab"')
    path = tmp_path / "with-params.png"
    Image.new("RGB", (16, 16)).save(path, pnginfo=pnginfo)
    text, _ = client.predict(handle_file(str(path)), api_name="/read_png_info")
    assert text.startswith("a cat <lora:x:0.5>\nNegative prompt: dog\n")
    updates = client.predict(text, api_name="/send_to_txt2img")
    sent = dict(zip(["prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "n_iter",
                     "batch_size", "cfg_scale", "seed", "clip_skip", "enable_hr", "hr_upscaler",
                     "hr_second_pass_steps", "denoising_strength", "hr_scale"],
                    [u.get("value") for u in updates]))
    assert sent["prompt"] == "a cat <lora:x:0.5>" and sent["negative_prompt"] == "dog"
    assert (sent["steps"], sent["sampler_name"], sent["cfg_scale"], sent["seed"]) == (7, "DDIM", 4.5, 77)
    assert (sent["width"], sent["height"], sent["clip_skip"]) == (128, 96, 2)
    assert sent["enable_hr"] is True and sent["hr_scale"] == 1.5 and sent["denoising_strength"] == 0.4
    assert sent["n_iter"] is None  # not in the infotext: the field keeps its value
    assert lora_hash == ["x: 0123456789ab"] * 2  # infotext_pasted ran on reading and on sending
    webui.options.update({"send_seed": False, "send_size": False})  # A1111's "Send seed/size ..." settings
    try:
        kept = [u.get("value") for u in client.predict(text, api_name="/send_to_txt2img")]
    finally:
        webui.options.update({"send_seed": True, "send_size": True})
    assert (kept[5], kept[6], kept[10], kept[4]) == (None, None, None, 7)  # width, height, seed kept; steps sent

    current = webui.models.current.checkpoint.title
    broken = next(info.title for info in webui.models.list_checkpoints() if info.name == "broken.safetensors")
    assert client.predict(broken, api_name="/switch_checkpoint")["value"] == current
    assert webui.models.current.checkpoint.title == current


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
def test_browser_generates_with_progress_bar_and_extension_cards(ui_server):
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    base, _, _ = ui_server
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000},  # --api-auth guards UI writes
                                    http_credentials={"username": "u", "password": "p"})
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            page.goto(base + "/")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            assert page.evaluate("typeof webuiStartProgress") == "function"  # host js loaded from the head
            page.get_by_role("tab", name="Cards").click()  # other pages (the Lora cards) may come first
            assert "card-count" in page.inner_text("#txt2img_cards_cards_html")
            page.click("#txt2img_generation_tab-button")  # the parameters sit in the tab beside the pages
            page.evaluate("webuiInsertPrompt('txt2img', 'a tower <lora:x:0.5>')")
            assert page.input_value("#txt2img_prompt textarea") == "a tower <lora:x:0.5>"
            for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "24")):
                page.fill(f"#{elem_id} input[type=number]", value)
                page.press(f"#{elem_id} input[type=number]", "Enter")
            page.evaluate("""() => {  // record every text the progress bar shows
                window.progressTexts = [];
                window.previewShown = false;
                new MutationObserver(() => {
                    const text = document.querySelector('#txt2img_progress .webui-progress-text');
                    if (text) window.progressTexts.push(text.textContent);
                    const preview = document.querySelector('#txt2img_progress .webui-live-preview');
                    if (preview && preview.src.startsWith('data:image/png;base64,')) window.previewShown = true;
                    const bar = document.querySelector('#txt2img_progress .webui-progress');
                    if (bar && bar.offsetHeight > 0 && text && text.textContent.includes('step')) {
                        window.progressShown = true;
                    }
                }).observe(document.querySelector('#txt2img_progress'),
                           {subtree: true, childList: true, characterData: true, attributes: true});
            }""")
            page.click("#txt2img_generate")
            page.wait_for_selector("#txt2img_gallery img", timeout=90_000)
            page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('Steps: 24')")
            texts = page.evaluate("window.progressTexts")
            assert any(re.match(r"\d+% step \d+/24", t) for t in texts), texts
            assert page.evaluate("window.previewShown")  # the live preview of the current latent
            assert page.inner_text("#html_info_txt2img").startswith("a tower <lora:x:0.5>")
            hidden = "getComputedStyle(document.querySelector('#txt2img_progress .webui-progress')).display"
            page.wait_for_function(f"{hidden} === 'none'")  # the bar goes away when the job is done
            assert page.evaluate("window.progressShown")  # and was on screen while it ran
            assert not page_errors, page_errors
        finally:
            browser.close()


def test_bind_host_is_localhost_unless_listen():
    from modules.cmd_args import parse_args  # noqa: PLC0415

    assert bind_host(parse_args(["--port", "9000"])) == "127.0.0.1"
    assert bind_host(parse_args(["--listen"])) == "0.0.0.0"


def test_parse_api_auth():
    assert parse_api_auth("a:b,c:d:e") == [("a", "b"), ("c", "d:e")]
    assert parse_api_auth(None) == []
    with pytest.raises(ValueError, match="user:password"):
        parse_api_auth("justaname")


@pytest.fixture(scope="module", autouse=True)
def launched(tmp_path_factory):
    """`python launch.py --port P --data-dir TMP`, started when the module starts (it boots while the other
    tests run); yields (base_url, process, log_path). Stopped with SIGINT at the end; must exit cleanly."""
    folder = tmp_path_factory.mktemp("launch")
    port = free_port()
    log_path = folder / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", str(folder / "data")],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield f"http://127.0.0.1:{port}", process, log_path
        finally:
            stop_servers(process)


@pytest.mark.slow
def test_launch_serves_ui_and_generates_on_localhost_only(launched):
    base, process, log_path = launched
    wait_until_up(base + "/sdapi/v1/progress", process, timeout=120)
    port = int(base.rsplit(":", 1)[1])
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0

    page = httpx.get(base + "/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "gradio_config" in page.text and "txt2img_prompt" in page.text
    assert "/webui-assets/host/javascript/ui.js" in page.text
    script = httpx.get(base + "/webui-assets/host/javascript/ui.js", timeout=30)
    assert script.status_code == 200 and "webuiStartProgress" in script.text

    models = httpx.get(base + "/sdapi/v1/sd-models", timeout=30).json()
    assert [m["model_name"] for m in models] == ["tiny-sd1-demo"]  # the embedded default was written
    response = httpx.post(base + "/sdapi/v1/txt2img", timeout=120, json={
        "prompt": "a lighthouse at dusk", "seed": 4242, "sampler_name": "Euler a", "steps": 3,
        "width": 64, "height": 64})
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.format == "PNG" and image.size == (64, 64)
    infotext = image.info["parameters"]
    assert infotext.startswith("a lighthouse at dusk\n")
    assert "Seed: 4242" in infotext and "Sampler: Euler a" in infotext and "Steps: 3" in infotext
    assert "Model: tiny-sd1-demo" in infotext

    # The console says what the start-up does, with timings, and names no temporary file first.
    console = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    assert "starting the WebUI" in console[0] and ".tmp" not in console[0]
    assert any("scanning LoRA folders" in line for line in console)
    serving = next(line for line in console if "serving on http://127.0.0.1:" in line)
    assert re.search(r"startup [\d.]+ s \(CPU [\d.]+ s\): imports [\d.]+ s, .*extensions [\d.]+ s \(LoRA scan, 10 files [\d.]+ s\), "
                     r"UI build [\d.]+ s", serving), serving
    assert any(re.search(r"model tiny-sd1-demo\.safetensors loaded in [\d.]+ s; ready to generate [\d.]+ s after "
                         r"launch", line) for line in console), console[-5:]

    process.send_signal(signal.SIGINT)  # Ctrl+C: a clean shutdown
    assert process.wait(30) == 0, log_path.read_text()[-3000:]
