"""The page a long-time A1111 user opens (issue 15), in Chromium against the real server, one browser per module.

The Lora folder looks like a real one: nested folders three deep, one stem in two folders (`concepts/lineart`,
`styles/lineart`, different weights so different hashes), a portrait `.preview.png`, A1111 sidecars with the same
negative text, Civitai Helper's `.civitai.info`, SD.Next's Civitai-format `<stem>.json`, and modelspec headers.
What a user sees is asserted: the progress bar's text and visibility during a held generation, the second `lineart`
card applying the second file's hash, an A1111 <= 1.8 infotext with `DPM++ 2M Karras` pasted and generating,
Civitai trigger words on a card and found by search, the gallery within one screen of Generate at 1400x1000, the
folder tree at three levels, badges/buttons/hover/active of the cards, warnings and errors under the image, the
negative text added once, "Replace preview" taking the selected gallery image. Screenshots of the txt2img page, the
Lora cards, the metadata popup and the edit dialog, light and dark, go to `test-artifacts/ui-*.png`.
"""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file

from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.paths import ROOT
from tests.helpers.servers import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")]

ARTIFACTS = ROOT / "test-artifacts"
HELD_STEP = 3
CIVITAI_INFO = {
    "id": 5678, "modelId": 1234, "name": "v2.0", "baseModel": "SD 1.5",
    "trainedWords": ["inkwash style", "sumi-e"],
    "description": "<p>Ink <b>wash</b> painting.</p><script>alert(9)</script><img src=x onerror=alert(8)>"
                   "<a href='javascript:alert(7)'>bad link</a>",
    "model": {"name": "Ink Wash Painting", "type": "LORA"}, "files": [], "images": [],
}
SDNEXT_JSON = {"id": 42, "modelId": 41, "name": "neon v1", "baseModel": "SD 1.5", "trainedWords": ["neonglow"],
               "model": {"name": "Neon Glow"}, "description": "glowing neon signs"}
MODELSPEC = {"modelspec.title": "Spec Style", "modelspec.trigger_phrase": "specstyle, crisp lines",
             "modelspec.description": "Lines drawn by a modelspec header", "modelspec.author": "Tester",
             "modelspec.license": "CC-BY-4.0", "ss_note": "x" * 60_000}  # the note makes it the largest file


def _variant(base: dict, path: Path, scale: float, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v * scale if k.endswith("up.weight") else v for k, v in base.items()}, str(path),
              metadata=metadata)
    return path


def _png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _build_library(lora: Path) -> None:
    base = load_file(str(lora / "demo_lora.safetensors"))
    _variant(base, lora / "concepts" / "lineart.safetensors", 0.5)
    _variant(base, lora / "styles" / "lineart.safetensors", 1.5)
    for folder in ("concepts", "styles"):
        (lora / folder / "lineart.json").write_text(json.dumps({"negative text": "blurry",
                                                                "description": f"lineart from {folder}"}))
    _variant(base, lora / "styles" / "anime" / "90s" / "retro_cel.safetensors", 0.7)
    (lora / "styles" / "anime" / "90s" / "retro_cel.preview.png").write_bytes(_png((300, 600), (200, 30, 30)))
    _variant(base, lora / "civitai" / "inkwash.safetensors", 0.8)
    (lora / "civitai" / "inkwash.civitai.info").write_text(json.dumps(CIVITAI_INFO))
    _variant(base, lora / "civitai" / "neonglow.safetensors", 0.9)
    (lora / "civitai" / "neonglow.json").write_text(json.dumps(SDNEXT_JSON))
    _variant(base, lora / "spec_style.safetensors", 1.1, metadata=MODELSPEC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("a1111-page")
    webui = WebUI.create(["--data-dir", str(data)])
    lora = webui.paths.lora_dir
    _build_library(lora)
    load_startup_model(webui)
    webui.services["lora_page"].refresh()
    gate = threading.Event()
    gate.set()

    def hold(p, step, total):  # a user's slow GPU: the job waits at one step while the test looks at the page
        if step == HELD_STEP and not gate.is_set():
            gate.wait(60)

    webui.callbacks.add("process_step", hold)
    app = create_app(webui)
    thread = ServerThread(app, port=0).start()
    yield SimpleNamespace(webui=webui, url=f"http://127.0.0.1:{thread.port}/", lora=lora, gate=gate)
    gate.set()
    thread.stop()


def _new_page(browser, url: str, theme: str = "light", width: int = 1400, height: int = 1000):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.errors = []
    page.dialogs = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(url + ("?__theme=dark" if theme == "dark" else ""))
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    return page


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - imported where it is needed

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def browser_page(browser, server):
    page = _new_page(browser, server.url)
    yield page
    page.context.close()


@pytest.fixture
def ui(browser_page):
    """The txt2img tab with empty prompts, tiny fast settings and the Generation tab open."""
    page = browser_page
    page.keyboard.press("Escape")
    page.click("#tab_txt2img-button")
    open_generation(page)
    for box in ("#txt2img_prompt textarea", "#txt2img_neg_prompt textarea"):
        page.fill(box, "")
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "6")):
        set_number(page, elem_id, value)
    yield page
    assert page.dialogs == [], f"a script ran: {page.dialogs}"
    assert page.errors == [], page.errors


def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def open_generation(page) -> None:
    page.click("#txt2img_generation_tab-button")
    page.wait_for_selector("#txt2img_steps", state="visible")


def open_lora(page) -> None:
    page.click("#txt2img_lora_tab-button")
    page.wait_for_selector("#txt2img_lora_page[data-loaded=true] .lora-card", timeout=30_000)


def lora_card(page, path: str):
    """The card of the file at `path` (relative to the Lora folder, without extension)."""
    page.fill("#txt2img_lora_extra_search", path)
    return page.locator(".lora-card").filter(has=page.locator(".lora-card-name")).first


def generate(page, timeout: float = 120_000) -> str:
    """Press Generate and wait for the new infotext; returns it."""
    info = "#html_info_txt2img .webui-infotext"
    old = page.inner_text(info) if page.locator(info).count() else ""
    page.click("#txt2img_generate")
    page.wait_for_function("([selector, old]) => { const el = document.querySelector(selector); "
                           "return el && el.innerText.includes('Steps:') && el.innerText !== old; }",
                           arg=[info, old], timeout=timeout)
    page.wait_for_function("() => !webuiProgressTimers.txt2img")  # the job's last step (hiding the bar) ran
    return page.inner_text(info)


def lora_hashes(infotext: str) -> dict[str, str]:
    found = re.search(r'Lora hashes: "([^"]*)"', infotext)
    assert found, infotext
    return dict(part.split(": ") for part in found.group(1).split(", "))


def entry(server, relative: str):
    return next(e for e in server.webui.services["lora"].registry.entries() if e.relative_name == relative)


# ---------------------------------------------------------------------------------------------- progress


def test_progress_bar_step_eta_and_live_preview_are_visible_while_a_generation_runs(ui, server):
    server.gate.clear()  # the job stops at step 3 of 6 until the test has looked
    try:
        ui.click("#txt2img_generate")
        bar = ui.locator("#txt2img_progress .webui-progress")
        ui.wait_for_function("() => /step 3\\/6/.test(document.querySelector("
                             "'#txt2img_progress .webui-progress-text')?.textContent || '')", timeout=60_000)
        assert bar.is_visible()
        text = ui.inner_text("#txt2img_progress .webui-progress-text")
        assert re.fullmatch(r"50% step 3/6 ETA \d+(m \d+)?s Batch 1 of 1", text), text
        fill = ui.locator("#txt2img_progress .webui-progress-fill").evaluate("(el) => el.style.width")
        assert fill == "50%"
        ui.wait_for_function("() => { const img = document.querySelector('#txt2img_progress .webui-live-preview');"
                             " return img && img.src.startsWith('data:image/png') && img.offsetHeight > 0; }")
        box = bar.bounding_box()
        assert box["height"] > 20 and box["y"] < 1000  # on screen, not below the fold
    finally:
        server.gate.set()
    ui.wait_for_function("() => document.querySelector('#html_info_txt2img').innerText.includes('Steps: 6')",
                         timeout=120_000)
    ui.wait_for_function("() => getComputedStyle(document.querySelector('#txt2img_progress .webui-progress'))"
                         ".display === 'none'")


# ------------------------------------------------------------------------------------- ambiguous stems


def test_the_second_lineart_card_applies_the_second_file(ui, server):
    first, second = entry(server, "concepts/lineart"), entry(server, "styles/lineart")
    open_lora(ui)
    ui.fill("#txt2img_lora_extra_search", "lineart.safetensors")
    cards = ui.locator(".lora-card")
    assert cards.count() == 2
    paths = [c.locator(".lora-card-path").inner_text() for c in cards.all()]
    assert paths == ["concepts/lineart", "styles/lineart"]  # each card says which file it inserts
    cards.nth(1).click()
    assert ui.input_value("#txt2img_prompt textarea") == "<lora:styles/lineart:1>"
    open_generation(ui)
    infotext = generate(ui)
    hashes = lora_hashes(infotext)
    assert hashes == {"styles/lineart": second.shorthash} and second.shorthash != first.read_hash()[:12]
    names = [item["name"] for item in httpx.get(server.url + "sdapi/v1/loras").json()]
    assert len(names) == len(set(names)) and {"concepts/lineart", "styles/lineart"} <= set(names)


def test_a_tag_naming_an_ambiguous_stem_lists_the_candidates(ui, server):
    ui.fill("#txt2img_prompt textarea", "a cat <lora:lineart:1>")
    infotext = generate(ui)
    assert lora_hashes(infotext) == {"lineart": entry(server, "concepts/lineart").shorthash}
    warning = ui.locator("#html_log_txt2img .webui-warning")
    assert warning.count() == 1
    assert ("'lineart' names 2 files: concepts/lineart (used), styles/lineart; the first in path order is used"
            in warning.inner_text())


def test_pasting_an_infotext_whose_hash_names_the_second_file_keeps_the_second_file(ui, server):
    second = entry(server, "styles/lineart")
    second.read_hash()
    text = (f"a cat <lora:lineart:0.8>\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, "
            f'Lora hashes: "lineart: {second.shorthash}"')
    ui.click("#tab_pnginfo-button")
    ui.fill("#pnginfo_generation_info textarea", text)
    ui.click("#pnginfo_send_txt2img")
    ui.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert ui.input_value("#txt2img_prompt textarea") == "a cat <lora:styles/lineart:0.8>"


# ------------------------------------------------------------------------------------ infotext sampler


def test_a1111_18_infotext_with_dpm_karras_pastes_and_generates(ui):
    text = "a lighthouse\nSteps: 6, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 77, Size: 64x64"
    ui.click("#tab_pnginfo-button")
    ui.fill("#pnginfo_generation_info textarea", text)
    ui.click("#pnginfo_send_txt2img")
    ui.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a lighthouse'")
    assert ui.input_value("#txt2img_sampling input") == "DPM++ 2M"
    assert ui.input_value("#txt2img_scheduler input") == "Karras"
    infotext = generate(ui)
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in infotext and "Seed: 77" in infotext
    assert not ui.locator(".toast-body.error").count()


# -------------------------------------------------------------------------------------- civitai data


def test_civitai_trigger_words_are_on_the_card_searchable_and_in_the_popup(ui, server):
    open_lora(ui)
    ui.fill("#txt2img_lora_extra_search", "sumi-e")
    assert [c.get_attribute("data-name") for c in ui.locator(".lora-card").all()] == ["inkwash"]
    card = ui.locator(".lora-card[data-name=inkwash]")
    assert card.locator(".lora-card-triggers").inner_text() == "inkwash style, sumi-e"
    description = card.locator(".lora-card-desc").inner_text()
    assert description.startswith("Ink wash painting.") and "alert" not in description
    ui.fill("#txt2img_lora_extra_search", "ink wash painting")  # the model name is searchable too
    assert ui.locator(".lora-card").count() == 1
    card.click()
    assert ui.input_value("#txt2img_prompt textarea") == "<lora:inkwash:1> inkwash style, sumi-e"
    card.locator("[data-action=meta]").click()
    popup = ui.locator(".lora-metadata .lora-model-page")
    popup.wait_for()
    rows = dict(zip(popup.locator("th").all_inner_texts(), popup.locator("td").all_inner_texts()))
    assert rows["Trigger words"] == "inkwash style, sumi-e" and rows["Model"] == "Ink Wash Painting"
    assert rows["Version"] == "v2.0" and rows["Base model"] == "SD 1.5"
    link = ui.locator(".lora-metadata .lora-model-link")
    assert link.get_attribute("href") == "https://civitai.com/models/1234?modelVersionId=5678"
    description = ui.locator(".lora-metadata .lora-model-description")
    assert description.locator("b").inner_text() == "wash"
    assert description.locator("script, img").count() == 0
    assert description.locator("a").get_attribute("href") is None  # the javascript: link lost its href
    ui.keyboard.press("Escape")
    info = server.lora / "civitai" / "inkwash.civitai.info"
    assert json.loads(info.read_text()) == CIVITAI_INFO  # read, never written


def test_sdnext_civitai_json_and_modelspec_feed_the_cards_and_stay_read_only(ui, server):
    open_lora(ui)
    neon = lora_card(ui, "neonglow")
    assert neon.locator(".lora-card-triggers").inner_text() == "neonglow"
    assert neon.locator(".lora-card-desc").inner_text() == "glowing neon signs"
    neon.locator("[data-action=edit]").click()
    dialog = ui.locator(".lora-edit")
    assert "kept read-only" in dialog.locator(".lora-warning").inner_text()
    dialog.locator("textarea[name=notes]").fill("my note")
    dialog.locator(".lora-edit-save").click()
    ui.wait_for_function("() => document.querySelector('.lora-edit-status').textContent.startsWith('Not saved')")
    assert "Civitai's model data" in ui.inner_text(".lora-edit-status")
    assert json.loads((server.lora / "civitai" / "neonglow.json").read_text()) == SDNEXT_JSON
    ui.keyboard.press("Escape")
    spec = lora_card(ui, "crisp lines")
    assert spec.get_attribute("data-name") == "spec_style"
    assert spec.locator(".lora-card-triggers").inner_text() == "specstyle, crisp lines"
    assert spec.locator(".lora-card-desc").inner_text() == "Lines drawn by a modelspec header"


# ------------------------------------------------------------------------------------------- layout


def test_the_gallery_sits_beside_the_parameters_within_one_screen_of_generate(ui):
    generate_box = ui.locator("#txt2img_generate").bounding_box()
    gallery = ui.locator("#txt2img_gallery").bounding_box()
    settings = ui.locator("#txt2img_settings").bounding_box()
    assert gallery["y"] - generate_box["y"] < 1000 and gallery["y"] + 100 < 1000  # no scroll to see the image
    assert gallery["x"] >= settings["x"] + settings["width"] - 1  # beside the parameters, not below them
    open_lora(ui)  # browsing cards keeps the result in view
    assert ui.locator("#txt2img_gallery").bounding_box()["y"] == pytest.approx(gallery["y"], abs=2)
    cards = ui.locator("#txt2img_lora_page").bounding_box()
    assert cards["x"] + cards["width"] <= gallery["x"] + 1


def test_the_layout_holds_at_800_pixels(browser, server):
    page = _new_page(browser, server.url, width=800, height=900)
    try:
        assert page.evaluate("document.documentElement.scrollWidth") <= 800
        gallery = page.locator("#txt2img_gallery").bounding_box()
        settings = page.locator("#txt2img_settings").bounding_box()
        assert gallery["x"] >= settings["x"] + settings["width"] - 1 and gallery["width"] > 250
        open_lora(page)
        assert page.locator(".lora-card").first.bounding_box()["width"] > 100
        assert page.evaluate("document.documentElement.scrollWidth") <= 800
        assert page.errors == []
    finally:
        page.context.close()


# ------------------------------------------------------------------------------------------ tree


def test_the_folder_tree_opens_three_levels_deep_and_filters(ui):
    open_lora(ui)
    ui.fill("#txt2img_lora_extra_search", "")
    tree = ui.locator(".lora-tree")
    deep = tree.locator(".lora-folder[data-folder='Lora/styles/anime/90s']")
    assert not deep.is_visible()
    tree.locator(".lora-tree-toggle[data-toggle='Lora/styles']").click()
    tree.locator(".lora-tree-toggle[data-toggle='Lora/styles/anime']").click()
    assert deep.is_visible() and deep.inner_text() == "90s (1)"
    toggle = tree.locator(".lora-tree-toggle[data-toggle='Lora/styles/anime']").bounding_box()
    anime = tree.locator(".lora-folder[data-folder='Lora/styles/anime']").bounding_box()
    assert abs(toggle["y"] - anime["y"]) < 6 and toggle["x"] < anime["x"]  # the arrow and its name on one row
    assert deep.bounding_box()["x"] > anime["x"]  # indented one level further
    assert deep.evaluate("(el) => el.scrollWidth <= el.clientWidth")  # the name is not clipped
    deep.click()
    assert [c.get_attribute("data-name") for c in ui.locator(".lora-card").all()] == ["retro_cel"]
    width = tree.bounding_box()["width"]
    tree.evaluate("(el) => { el.style.width = '320px'; }")  # what dragging the resize handle does
    assert tree.bounding_box()["width"] > width + 100
    assert tree.evaluate("(el) => getComputedStyle(el).resize") == "horizontal"
    tree.evaluate("(el) => { el.style.width = ''; }")
    deep.click()


# ---------------------------------------------------------------------------------------- card ui


def _luminance(rgb: str) -> float:
    channels = [int(v) / 255 for v in re.findall(r"\d+", rgb)[:3]]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_card_badges_buttons_hover_active_portrait_thumbnails_and_size_sort(ui, server):
    open_lora(ui)
    card = lora_card(ui, "retro_cel")
    for badge in card.locator(".lora-badge").all():
        color, background = badge.evaluate("(el) => [getComputedStyle(el).color, getComputedStyle(el).backgroundColor]")
        assert _contrast(color, background) >= 4.5, (badge.inner_text(), color, background)
    buttons = card.locator(".lora-card-button")
    ui.mouse.move(0, 0)  # not hovering: the buttons are visible anyway (touch screens)
    for button in buttons.all():
        assert button.evaluate("(el) => Number(getComputedStyle(el).opacity)") == 1
        box = button.bounding_box()
        assert box["width"] >= 28 and box["height"] >= 28
    card.focus()
    ui.keyboard.press("Tab")
    assert ui.evaluate("document.activeElement.dataset.action") == "copy"  # keyboard reaches the buttons
    style = "(el) => [getComputedStyle(el).borderTopWidth, getComputedStyle(el).borderTopColor]"
    plain = card.evaluate(style)
    card.hover()
    hovered = card.evaluate(style)
    card.click()
    ui.mouse.move(0, 0)
    active = card.evaluate(style)
    assert card.locator(".lora-card-in-prompt").is_visible()
    assert len({tuple(plain), tuple(hovered), tuple(active)}) == 3, (plain, hovered, active)
    card.click()
    image = card.locator("img")
    image.wait_for()
    ui.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shown = image.bounding_box()
    assert shown["height"] > shown["width"] * 1.2  # a portrait preview stays portrait (3:4 card, not a square)
    natural = image.evaluate("(img) => [img.naturalWidth, img.naturalHeight]")
    assert "size=" in image.get_attribute("src") and natural[1] <= 384 < 600  # a thumbnail, not the 600 px file
    ui.fill("#txt2img_lora_extra_search", "")
    ui.select_option("#txt2img_lora_extra_sort", "size")
    if ui.get_attribute("#txt2img_lora_extra_sort_dir", "data-dir") == "asc":
        ui.click("#txt2img_lora_extra_sort_dir")
    shown = ui.evaluate("""() => [...document.querySelectorAll('#txt2img_lora_page .lora-card')]
        .sort((a, b) => (a.getBoundingClientRect().top - b.getBoundingClientRect().top) ||
                        (a.getBoundingClientRect().left - b.getBoundingClientRect().left)).map((c) => c.dataset.name)""")
    sizes = {e.name: e.size for e in server.webui.services["lora"].registry.entries()}
    assert shown[:4] == sorted(shown[:4], key=lambda name: -sizes[name])  # largest first
    assert shown[0] == max((name for name in shown), key=lambda name: sizes[name])
    assert sizes[shown[0]] > sizes["spec_style"] > sizes["lineart"]
    ui.click("#txt2img_lora_extra_sort_dir")
    ui.select_option("#txt2img_lora_extra_sort", "default")


# ------------------------------------------------------------------------------- warnings and errors


def test_warnings_and_errors_under_the_image_look_different(ui):
    ui.fill("#txt2img_prompt textarea", "a cat <lora:lineart:1> <lora:no_such_lora:1>")
    generate(ui)
    warning = ui.locator("#html_log_txt2img .webui-warning")
    error = ui.locator("#html_log_txt2img .webui-error")
    assert "names 2 files" in warning.inner_text() and error.inner_text().endswith("Lora not found: no_such_lora")
    assert error.get_attribute("role") == "alert"
    colors = [el.evaluate("(e) => [getComputedStyle(e).borderLeftColor, getComputedStyle(e).backgroundColor]")
              for el in (warning, error)]
    assert colors[0] != colors[1]
    plain = ui.evaluate("() => getComputedStyle(document.querySelector('#html_info_txt2img p')).backgroundColor")
    assert plain not in (colors[0][1], colors[1][1])


# ------------------------------------------------------------------------------------- smaller items


def test_shared_negative_text_is_added_once_and_removed_with_the_last_card(ui):
    open_lora(ui)
    ui.fill("#txt2img_lora_extra_search", "lineart.safetensors")
    first, second = ui.locator(".lora-card").all()
    first.click()
    second.click()
    assert ui.input_value("#txt2img_neg_prompt textarea") == "blurry"
    first.click()
    assert ui.input_value("#txt2img_neg_prompt textarea") == "blurry"  # the second card still needs it
    second.click()
    assert ui.input_value("#txt2img_neg_prompt textarea") == ""


def test_replace_preview_takes_the_selected_gallery_image_and_the_editor_shows_it(ui, server):
    set_number(ui, "txt2img_batch_size", "2")
    ui.fill("#txt2img_prompt textarea", "two towers")
    try:
        generate(ui)
    finally:
        set_number(ui, "txt2img_batch_size", "1")
    thumbs = ui.locator("#txt2img_gallery .thumbnail-item")
    assert thumbs.count() >= 2
    sources = [thumbs.nth(i).locator("img").get_attribute("src") for i in range(2)]
    assert sources[0] != sources[1]
    thumbs.nth(1).click()  # the second image is the one the user wants
    selected = ui.evaluate("() => webuiSelectedGalleryImage('txt2img').src")
    assert selected.endswith(sources[1].rpartition("/")[2])
    wanted = httpx.get(selected if selected.startswith("http") else server.url.rstrip("/") + selected).content
    open_lora(ui)
    card = lora_card(ui, "inkwash")
    card.locator("[data-action=edit]").click()
    dialog = ui.locator(".lora-edit")
    assert dialog.locator(".lora-edit-preview").inner_text() == "No preview"
    dialog.locator(".lora-edit-replace-preview").click()
    ui.wait_for_function("() => document.querySelector('.lora-edit-status').textContent === 'Preview replaced.'")
    written = (server.lora / "civitai" / "inkwash.png").read_bytes()
    assert Image.open(io.BytesIO(written)).tobytes() == Image.open(io.BytesIO(wanted)).tobytes()
    dialog.locator(".lora-edit-preview img").wait_for()
    assert dialog.locator(".lora-edit-preview img").evaluate("(img) => img.complete && img.naturalWidth") > 0
    ui.keyboard.press("Escape")
    assert lora_card(ui, "inkwash").locator("img").count() == 1


# ---------------------------------------------------------------------------------------- screenshots


def _screens(page, theme: str) -> list[Path]:
    ARTIFACTS.mkdir(exist_ok=True)
    shots = []
    page.fill("#txt2img_prompt textarea", "a lighthouse at dusk <lora:styles/lineart:0.8> <lora:lineart:1>")
    for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "4")):
        set_number(page, elem_id, value)
    generate(page)
    shots.append(ARTIFACTS / f"ui-txt2img-{theme}.png")
    page.screenshot(path=str(shots[-1]), full_page=True)  # down to the warnings under the image
    open_lora(page)
    page.fill("#txt2img_lora_extra_search", "")
    page.locator(".lora-tree-toggle[data-toggle='Lora/styles']").click()
    page.locator(".lora-tree-toggle[data-toggle='Lora/styles/anime']").click()
    page.locator(".lora-card").nth(1).hover()
    shots.append(ARTIFACTS / f"ui-lora-cards-{theme}.png")
    page.screenshot(path=str(shots[-1]))
    page.fill("#txt2img_lora_extra_search", "inkwash")
    page.locator(".lora-card[data-name=inkwash] [data-action=meta]").click()
    page.locator(".lora-metadata .lora-blocks-slot .lora-block-row, .lora-metadata .lora-blocks-slot p").first.wait_for()
    shots.append(ARTIFACTS / f"ui-popup-{theme}.png")
    page.screenshot(path=str(shots[-1]))
    page.keyboard.press("Escape")
    page.locator(".lora-card[data-name=inkwash] [data-action=edit]").click()
    page.locator(".lora-edit .lora-edit-save").wait_for()
    shots.append(ARTIFACTS / f"ui-edit-dialog-{theme}.png")
    page.screenshot(path=str(shots[-1]))
    page.keyboard.press("Escape")
    return shots


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_screenshots_of_the_page_cards_popup_and_editor(browser, server, theme):
    page = _new_page(browser, server.url, theme=theme)
    try:
        assert page.evaluate("document.body.classList.contains('dark')") == (theme == "dark")
        for path in _screens(page, theme):
            assert path.stat().st_size > 10_000
            with Image.open(path) as shot:
                assert shot.size[0] == 1400 and shot.size[1] >= 1000
        assert page.errors == [] and page.dialogs == []
    finally:
        page.context.close()


def test_card_thumbnail_route_sends_a_small_png(server):
    key = str(server.lora / "styles" / "anime" / "90s" / "retro_cel.safetensors")
    full = httpx.get(server.url + "lora-ui/thumb", params={"key": key})
    small = httpx.get(server.url + "lora-ui/thumb", params={"key": key, "size": 200})
    assert full.status_code == small.status_code == 200
    with Image.open(io.BytesIO(full.content)) as image:  # never the full-size file: at most CARD_THUMB_SIZE
        assert image.size == (256, 512)
    with Image.open(io.BytesIO(small.content)) as image:
        assert image.size == (128, 256) and image.format == "PNG"  # the 256 px bucket, aspect kept
