"""The Lora tab in a real browser: Debian Chromium driven by Playwright against the real server (one each per module).

A fresh data folder gets the tiny SD1 checkpoint and the 10 demo LoRAs; the tests add a sub-folder with a LoRA whose
sidecar and metadata hold HTML/JS payloads and one marked SDXL. What a user would see is asserted: cards listed,
search, sort, folder tree, the SD-version filter following the loaded model, click-to-toggle in the prompt (also after
a hand-edited weight), drag onto the prompt, the metadata popup with its block chart, the edit dialog writing the
sidecar JSON, XSS payloads shown as text. A screenshot goes to `test-artifacts/lora-tab.png`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.paths import ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
XSS = "<img src=x onerror=alert(1)>"
DEMOS = ["demo_lora", "demo_locon", "demo_loha", "demo_lokr", "demo_ia3", "demo_full", "demo_norm", "demo_glora",
         "demo_oft", "demo_dora"]

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: "
                                "apt-get install -y chromium chromium-driver")


def _add_test_loras(lora_dir: Path) -> None:
    """sub/evil (XSS payloads everywhere a file can put text), sub/xl_style (SDXL by sidecar), mtimes for sorting."""
    sub = lora_dir / "sub"
    sub.mkdir(exist_ok=True)
    tensors = load_file(str(lora_dir / "demo_lora.safetensors"))
    evil_meta = {"ss_sd_model_name": "<script>alert(3)</script>", "ss_output_name": "evil",
                 "ss_tag_frequency": json.dumps({"set": {"<b>bold</b>": 3, "plain": 2}})}
    save_file(tensors, str(sub / "evil.safetensors"), metadata=evil_meta)
    (sub / "evil.json").write_text(json.dumps({"description": XSS, "activation text": '"><img src=y onerror=alert(2)>',
                                               "sd version": "SD1"}), encoding="utf-8")
    save_file(tensors, str(sub / "xl_style.safetensors"), metadata={"ss_output_name": "xl-style"})
    (sub / "xl_style.json").write_text(json.dumps({"sd version": "SDXL", "description": "an SDXL style"}))
    sidecar = lora_dir / "demo_ia3.json"
    data = json.loads(sidecar.read_text())
    data["civitai"] = {"id": 123, "note": "kept by the editor"}
    sidecar.write_text(json.dumps(data))
    base = 1_700_000_000
    for offset, name in enumerate(DEMOS):
        stamp = base + (offset * 7919) % 10 * 1000  # a known order, different from the names' order
        os.utime(lora_dir / f"{name}.safetensors", (stamp, stamp))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("lora-tab")
    webui = WebUI.create(["--data-dir", str(data)])
    _add_test_loras(webui.paths.lora_dir)
    load_startup_model(webui)
    page = webui.services["lora_page"]
    page.refresh()
    app = create_app(webui)
    thread = ServerThread(app, port=0).start()
    yield SimpleNamespace(webui=webui, url=f"http://127.0.0.1:{thread.port}/", lora_dir=webui.paths.lora_dir)
    thread.stop()


@pytest.fixture(scope="module")
def browser_page(server):
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - imported where it is needed

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1300})
        page = context.new_page()
        page.dialogs = []
        page.errors = []
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(server.url)
        page.click("#txt2img_lora_tab-button", timeout=60_000)  # the Lora tab beside "Generation"
        page.wait_for_selector("#txt2img_lora_page[data-loaded=true] .lora-card", timeout=30_000)
        yield page
        browser.close()


@pytest.fixture
def ui(browser_page):
    """The page with an empty search, default sort, all folders, and empty prompts."""
    page = browser_page
    page.keyboard.press("Escape")
    for box in ("#txt2img_prompt textarea", "#txt2img_neg_prompt textarea"):
        page.fill(box, "")
    page.select_option("#txt2img_lora_extra_sort", "default")
    if page.get_attribute("#txt2img_lora_extra_sort_dir", "data-dir") == "desc":
        page.click("#txt2img_lora_extra_sort_dir")
    page.select_option("#txt2img_lora_extra_view", "tree")
    selected = page.locator(".lora-tree .lora-folder-selected")
    if selected.count() and selected.first.get_attribute("data-folder"):
        selected.first.click()
    page.fill("#txt2img_lora_extra_search", "")
    page.locator(".lora-card-size").fill("110")  # every card in view of the half-width Lora tab (a virtual grid)
    yield page
    assert page.dialogs == [], f"a script ran: {page.dialogs}"
    assert page.errors == [], page.errors


def card_names(page) -> list[str]:
    """Names of the rendered cards in reading order (rows top to bottom, left to right)."""
    return page.evaluate("""() => [...document.querySelectorAll('#txt2img_lora_page .lora-card')]
        .map((c) => ({r: c.getBoundingClientRect(), n: c.dataset.name}))
        .sort((a, b) => (a.r.top - b.r.top) || (a.r.left - b.r.left)).map((x) => x.n)""")


def test_tab_lists_the_demo_loras(ui):
    names = card_names(ui)
    for name in DEMOS:
        assert name in names
    card = ui.locator(".lora-card[data-name=demo_lora]")
    assert card.locator(".lora-card-name").inner_text() == "demo_lora"
    assert card.locator(".lora-badge-sd").inner_text() == "SD1"
    assert card.locator(".lora-badge-algo").inner_text() == "LoRA"
    assert card.locator(".lora-card-triggers").inner_text() == "sunset style"
    assert "warm sunset palette" in card.locator(".lora-card-desc").inner_text()
    assert card.locator("img").evaluate("(img) => img.complete && img.naturalWidth") == 192  # 256 px file, thumbnail
    assert "size=192" in card.locator("img").get_attribute("src")  # 110 px card x 4/3 -> the 192 px thumbnail
    assert ui.locator(".lora-card[data-name=demo_dora] .lora-badge-algo").inner_text() == "LoRA+DoRA"
    # copy, meta, edit, and the "compare" action (lora_compare.js)
    assert ui.locator(".lora-card[data-name=demo_dora] .lora-card-buttons button").count() == 4


def test_search_filters_by_name_alias_description_activation_tags(ui):
    for query, expected in (("watercolor", ["demo_loha"]), ("demo-oft", ["demo_oft"]),
                            ("PIXEL ART", ["demo_lokr"]), ("colour-grading", ["demo_norm"]),
                            ("sub/ evil", ["evil"]), ("1girl full", ["demo_full"]), ("zzz-nothing", [])):
        ui.fill("#txt2img_lora_extra_search", query)
        assert card_names(ui) == expected, query
    ui.fill("#txt2img_lora_extra_search", "zzz-nothing")
    assert ui.locator(".lora-empty").inner_text() == "No LoRA matches."
    ui.fill("#txt2img_lora_extra_search", "")
    assert len(card_names(ui)) == 11


def test_sort_orders_change(ui, server):
    path_order = card_names(ui)
    assert path_order[:3] == ["demo_dora", "demo_full", "demo_glora"]
    ui.select_option("#txt2img_lora_extra_sort", "name")
    ui.click("#txt2img_lora_extra_sort_dir")
    assert ui.locator("#txt2img_lora_extra_sort_dir").inner_text() == "Descending"
    by_name_desc = card_names(ui)
    assert by_name_desc == sorted(path_order, key=str.lower, reverse=True)
    ui.select_option("#txt2img_lora_extra_sort", "modified")
    ui.click("#txt2img_lora_extra_sort_dir")
    by_date = [n for n in card_names(ui) if n.startswith("demo_")]
    stamps = {n: os.path.getmtime(server.lora_dir / f"{n}.safetensors") for n in by_date}
    assert by_date == sorted(by_date, key=lambda n: (stamps[n], path_order.index(n)))
    assert by_date != sorted(by_date)


def test_card_size_and_copy_path(ui, server):
    ui.fill("#txt2img_lora_extra_search", "demo_lora")  # the one card stays in view at any size
    card = ui.locator(".lora-card[data-name=demo_lora]")
    width = card.bounding_box()["width"]
    ui.locator(".lora-card-size").fill("300")
    card = ui.locator(".lora-card[data-name=demo_lora]")
    assert card.bounding_box()["width"] == pytest.approx(300, abs=2) and width < 250
    ui.locator(".lora-card-size").fill("110")
    ui.context.grant_permissions(["clipboard-read", "clipboard-write"])
    card.hover()
    card.locator("[data-action=copy]").click()
    assert ui.evaluate("() => navigator.clipboard.readText()") == str(server.lora_dir / "demo_lora.safetensors")
    assert ui.input_value("#txt2img_prompt textarea") == ""  # the button does not toggle the card


def test_folder_tree_and_dirs_view(ui):
    ui.click(".lora-tree .lora-folder[data-folder='Lora/sub']")
    assert card_names(ui) == ["evil"]
    ui.click(".lora-tree .lora-folder[data-folder='Lora/sub']")
    assert len(card_names(ui)) == 11
    ui.select_option("#txt2img_lora_extra_view", "dirs")
    assert ui.locator(".lora-tree").is_hidden()
    ui.click(".lora-dirs .lora-folder[data-folder='Lora/sub']")
    assert card_names(ui) == ["evil"]
    ui.click(".lora-dirs .lora-folder[data-folder='']")
    assert len(card_names(ui)) == 11


def test_other_sd_versions_hidden_and_follow_the_loaded_model(ui, server):
    assert "xl_style" not in card_names(ui)
    assert ui.locator("#txt2img_lora_hide_incompatible").is_checked()
    ui.uncheck("#txt2img_lora_hide_incompatible")
    assert "xl_style" in card_names(ui)
    ui.check("#txt2img_lora_hide_incompatible")
    engine = server.webui.services["lora"]
    real = engine.model
    engine.model = SimpleNamespace(family="SDXL")  # what model_loaded leaves behind after switching to an SDXL model
    try:
        ui.wait_for_function("() => !!document.querySelector('.lora-card[data-name=xl_style]')", timeout=8000)
        assert card_names(ui) == ["xl_style"]
    finally:
        engine.model = real
    ui.wait_for_function("() => !document.querySelector('.lora-card[data-name=xl_style]')", timeout=8000)


def test_click_toggles_tag_activation_and_negative_text(ui):
    prompt, negative = "#txt2img_prompt textarea", "#txt2img_neg_prompt textarea"
    ui.fill(prompt, "a cat,")
    ui.fill(negative, "lowres")
    card = ui.locator(".lora-card[data-name=demo_lora]")
    card.click()
    assert ui.input_value(prompt) == "a cat, <lora:demo-lora:0.8> sunset style"
    assert ui.input_value(negative) == "lowres, blurry"
    assert "lora-card-active" in card.get_attribute("class")
    ui.fill(prompt, "a cat, <lora:demo-lora:0.35> sunset style")  # weight edited by hand
    card.click()
    assert ui.input_value(prompt) == "a cat,"
    assert ui.input_value(negative) == "lowres"
    ui.locator(".lora-card[data-name=demo_lokr]").click()  # no negative text, preferred weight 0.6
    ui.locator(".lora-card[data-name=demo_locon]").click()
    assert ui.input_value(prompt) == "a cat, <lora:demo-lokr:0.6> pixel art <lora:demo-locon:0.7> ink lineart"
    ui.locator(".lora-card[data-name=demo_lokr]").click()
    assert ui.input_value(prompt) == "a cat, <lora:demo-locon:0.7> ink lineart"
    assert ui.input_value(negative) == "lowres"


def test_drag_card_onto_prompt_inserts_text(ui):
    ui.fill("#txt2img_prompt textarea", "")
    ui.locator(".lora-card[data-name=demo_glora] .lora-card-name").drag_to(ui.locator("#txt2img_prompt textarea"))
    assert ui.input_value("#txt2img_prompt textarea") == "<lora:demo-glora:0.9> glora texture"


def test_metadata_popup_shows_training_table_tags_and_blocks(ui):
    ui.hover(".lora-card[data-name=demo_lora]")
    ui.click(".lora-card[data-name=demo_lora] [data-action=meta]")
    popup = ui.locator(".lora-metadata")
    popup.locator(".lora-block-row").first.wait_for(timeout=20_000)
    text = popup.inner_text()
    for expected in ("Resolution buckets", "512x512 (42)", "Dataset size", "networks.lora", "tiny-sd1-demo",
                     "Training started", "2023-11-14"):
        assert expected in text, expected
    tags = popup.locator(".lora-tags .lora-tag")
    assert tags.first.inner_text().replace("\n", " ") == "sunset style 40"
    blocks = popup.locator(".lora-block-row").evaluate_all("(rows) => rows.map((r) => r.dataset.block)")
    assert blocks[0] == "TE" and "M00" in blocks and any(b.startswith("IN") for b in blocks)
    widths = popup.locator(".lora-block-bar").evaluate_all("(bars) => bars.map((b) => parseFloat(b.style.width))")
    assert max(widths) == 100.0
    ui.keyboard.press("Escape")
    assert ui.locator(".lora-metadata").count() == 0


def test_edit_dialog_saves_sidecar_json(ui, server):
    ui.hover(".lora-card[data-name=demo_ia3]")
    ui.click(".lora-card[data-name=demo_ia3] [data-action=edit]")
    dialog = ui.locator(".lora-edit")
    dialog.locator("textarea[name=description]").fill("Edited in the browser: ünïcode ok")
    dialog.locator(".lora-edit-tags .lora-tag[data-tag=masterpiece]").click()
    assert dialog.locator("textarea[name='activation text']").input_value() == "dramatic light, masterpiece"
    dialog.locator("input[name='preferred weight']").fill("0.65")
    dialog.locator("select[name='sd version']").select_option("SD1")
    dialog.locator("textarea[name='negative text']").fill("jpeg artifacts")
    dialog.locator(".lora-edit-save").click()
    ui.wait_for_selector(".lora-edit", state="detached")
    sidecar = server.lora_dir / "demo_ia3.json"
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    assert data["description"] == "Edited in the browser: ünïcode ok"
    assert data["activation text"] == "dramatic light, masterpiece"
    assert data["preferred weight"] == 0.65
    assert data["negative text"] == "jpeg artifacts"
    assert data["notes"] == "Written on first start (IA3)."
    assert data["civitai"] == {"id": 123, "note": "kept by the editor"}
    assert "ünïcode" in sidecar.read_text(encoding="utf-8")
    card = ui.locator(".lora-card[data-name=demo_ia3]")
    assert card.locator(".lora-card-desc").inner_text() == "Edited in the browser: ünïcode ok"
    assert card.locator(".lora-card-triggers").inner_text() == "dramatic light, masterpiece"
    card.click()
    assert ui.input_value("#txt2img_prompt textarea") == "<lora:demo-ia3:0.65> dramatic light, masterpiece"
    assert ui.input_value("#txt2img_neg_prompt textarea") == "jpeg artifacts"


def test_html_in_files_is_shown_as_text_and_runs_nothing(ui):
    ui.fill("#txt2img_lora_extra_search", "evil")
    card = ui.locator(".lora-card[data-name=evil]")
    assert card.locator(".lora-card-desc").inner_text() == XSS
    assert card.locator(".lora-card-triggers").inner_text() == '"><img src=y onerror=alert(2)>'
    card.hover()
    card.locator("[data-action=meta]").click()
    ui.locator(".lora-metadata .lora-meta-table").first.wait_for()
    assert "<script>alert(3)</script>" in ui.locator(".lora-metadata").inner_text()
    assert "<b>bold</b>" in ui.locator(".lora-metadata .lora-tags").inner_text()
    ui.keyboard.press("Escape")
    card.locator("[data-action=edit]").click()
    assert ui.locator(".lora-edit textarea[name=description]").input_value() == XSS
    injected = ui.evaluate("""() => document.querySelectorAll(
        'img[src="x"], img[src="y"], .lora-page script, .lora-modal script, .lora-page b, .lora-modal b').length""")
    assert injected == 0
    ui.keyboard.press("Escape")
    time.sleep(0.3)
    assert ui.evaluate("() => document.querySelectorAll('[onerror], [onclick]').length") == 0


def test_refresh_button_rescans(ui, server):
    tensors = load_file(str(server.lora_dir / "demo_lora.safetensors"))
    save_file(tensors, str(server.lora_dir / "sub" / "fresh_one.safetensors"), metadata={"ss_output_name": "fresh"})
    ui.click("#txt2img_lora_extra_refresh")
    ui.wait_for_function("() => !!document.querySelector('.lora-card[data-name=fresh_one]')", timeout=15_000)
    assert ui.locator(".lora-count").inner_text() == "12 of 13 LoRAs"


def test_screenshot_of_the_tab(ui):
    ui.fill("#txt2img_prompt textarea", "a lighthouse at dusk")
    ui.locator(".lora-card[data-name=demo_lora]").click()
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    ui.locator("#txt2img_lora_tab").screenshot(path=str(out / "lora-tab.png"))
    assert (out / "lora-tab.png").stat().st_size > 10_000
