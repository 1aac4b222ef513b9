"""Scripts in a real browser (Debian Chromium driven by Playwright against the real server, the embedded tiny model and
demo LoRAs): the txt2img Script dropdown lists "X/Y/Z plot" and shows its UI, a 2 x 2 grid made from the UI lands in
the gallery (its size is the layout's: two labelled columns, two labelled rows), and a Lora card's "compare" button
sets up the plot over that LoRA's weight without touching the prompt, giving a 5-cell grid with one more click.
"""

from __future__ import annotations

import os
import re
from types import SimpleNamespace

import pytest

from modules import image_grid
from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.servers import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")
XYZ = "#script_txt2img_x_y_z_plot"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    webui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("scripts-ui"))])
    load_startup_model(webui)
    thread = ServerThread(create_app(webui), port=0).start()
    yield SimpleNamespace(webui=webui, url=f"http://127.0.0.1:{thread.port}/")
    thread.stop()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(server.url)
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        for elem_id in ("txt2img_width", "txt2img_height"):
            page.fill(f"#{elem_id} input[type=number]", "64")
            page.press(f"#{elem_id} input[type=number]", "Enter")
        yield page
        browser.close()


def _box(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def _option(page, text: str):
    """The open Gradio dropdown's option `text` (Gradio puts a check mark before each)."""
    return page.locator("li[role=option]").filter(has_text=re.compile(rf"^[\s\u2713]*{re.escape(text)}\s*$"))


def _choose(page, elem_id: str, option: str) -> None:
    """Pick `option` in a Gradio dropdown as a user does: open it, click the option."""
    page.click(f"#{elem_id} input")
    _option(page, option).click()


def _gallery_sizes(page, count: int) -> list[tuple[int, int]]:
    page.wait_for_function(f"document.querySelectorAll('#txt2img_gallery img').length === {count} && "
                           "[...document.querySelectorAll('#txt2img_gallery img')].every(i => i.complete && "
                           "i.naturalWidth > 0)", timeout=120_000)
    return [tuple(size) for size in page.evaluate(
        "[...document.querySelectorAll('#txt2img_gallery img')].map(i => [i.naturalWidth, i.naturalHeight])")]


def test_script_dropdown_and_a_2x2_grid_from_the_ui(page):
    page.fill("#txt2img_prompt textarea", "a lighthouse")
    assert not page.locator(XYZ + "_x_type").is_visible()
    page.click("#txt2img_script_list input")
    options = [text.strip("\u2713 \n") for text in page.locator("li[role=option]").all_inner_texts()]
    assert options == ["None", "Prompt matrix", "Prompts from file or textbox", "X/Y/Z plot"]
    _option(page, "X/Y/Z plot").click()
    page.wait_for_selector(XYZ + "_x_type", state="visible")
    assert _box(page, "script_txt2img_x_y_z_plot_x_type").input_value() == "Seed"
    _box(page, "script_txt2img_x_y_z_plot_x_values").fill("1, 2")
    _choose(page, "script_txt2img_x_y_z_plot_y_type", "Steps")
    _box(page, "script_txt2img_x_y_z_plot_y_values").fill("1, 2")
    page.click("#txt2img_generate")
    sizes = _gallery_sizes(page, 1)
    size = image_grid.font_size_for(64, 64)
    top = max(image_grid.render_label(text, 64, size).height for text in ("Seed: 1", "Seed: 2"))
    assert sizes == [image_grid.GridLayout(64, 64, 2, 2, left=48, top=top).size]
    page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('Script: X/Y/Z plot')")
    info = page.inner_text("#html_info_txt2img")
    assert "X Type: Seed" in info and "Y Type: Steps" in info
    assert page.errors == [], page.errors


def test_lora_card_compare_sets_up_the_weight_plot(page):
    page.fill("#txt2img_prompt textarea", "a lighthouse")
    page.click("#txt2img_lora_tab-button")  # the cards are a tab beside "Generation"
    page.wait_for_selector("#txt2img_lora_page[data-loaded=true] .lora-card", timeout=30_000)
    compare = page.locator(".lora-card[data-name=demo_lora] .lora-card-compare")
    compare.scroll_into_view_if_needed()
    compare.click()
    page.wait_for_function("document.querySelector('#script_txt2img_x_y_z_plot_x_values textarea, "
                           "#script_txt2img_x_y_z_plot_x_values input').value.startsWith('demo_lora:')")
    assert _box(page, "txt2img_script_list").input_value() == "X/Y/Z plot"
    assert _box(page, "script_txt2img_x_y_z_plot_x_type").input_value() == "Lora weight"
    assert _box(page, "script_txt2img_x_y_z_plot_x_values").input_value() == "demo_lora: 0, 0.25, 0.5, 0.75, 1"
    assert _box(page, "script_txt2img_x_y_z_plot_y_type").input_value() == "Nothing"
    assert page.input_value("#txt2img_prompt textarea") == "a lighthouse"  # the card's own click did not run
    page.click("#txt2img_generate")
    page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('X Type: Lora weight')",
                           timeout=120_000)
    (width, _), = _gallery_sizes(page, 1)
    assert width == 5 * 64
    assert "<lora:demo_lora:0>" in page.inner_text("#html_info_txt2img")
    assert page.errors == [], page.errors
