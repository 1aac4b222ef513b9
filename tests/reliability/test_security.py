"""Security of the real server: escaped UI text, names that cannot leave the Lora folders, --api-auth, bind address.

One server for the module (uvicorn in a thread on 127.0.0.1, the full Gradio UI, `--api-auth`), on a fresh data folder
with a tiny SD1 checkpoint and LoRA files whose file names, folder name, safetensors metadata (`ss_tag_frequency`
tags, `modelspec.title`/`description`, `ss_output_name`, ...), sidecar JSON and `.txt` description hold HTML/JS
payloads that set `window.__xss`. Beside the Lora folder lies an `outside` folder with sentinel files (a sidecar, a
preview, a strong LoRA) that symlinks and path-like names try to reach.

* (a) Real Chromium opens the Lora tab: cards, folder tree, error list, hover, the metadata popup, the edit dialog
  (and saving it), click-to-insert and a generation whose infotext holds the payload. `window.__xss` stays
  undefined, no element carries an injected handler, and each payload is visible as literal text. The HTML the
  card-page routes return holds the escaped form; saved sidecars hold the literal text.
* (b) Every route that takes a LoRA name or card key refuses paths (`..`, absolute, URL-encoded, backslashes, NUL)
  with a 4xx and a message; symlinked previews, sidecars and `.txt` descriptions pointing outside the Lora folders
  (and not beside the LoRA's real file) are refused by the API, the card page and the registry alike, while a
  symlinked Lora folder keeps its own companions; a prompt cannot load a LoRA by path; the sentinel files stay
  byte-identical.
* (c) `--api-auth`: every route under `/sdapi/` (from the app object and `/openapi.json`) answers 401 without or with
  wrong credentials and something else with the right ones; tricks with the path do not get around it; every route
  outside `/sdapi/` is a known UI/doc route.
* (d) `launch.py` binds 127.0.0.1, and 0.0.0.0 only with `--listen`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from PIL import Image, PngImagePlugin
from starlette.routing import Mount, Route, WebSocketRoute

from modules.host import WebUI
from modules.tiny_models import write_single_file
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora
from tests.helpers.servers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    free_port,
    listening_addresses,
    stop_servers,
    wait_until_up,
)

AUTH = ("sec-user", "s3cret: pass")
TINY = {"negative_prompt": "", "seed": 99, "sampler_name": "Euler", "steps": 2, "width": 64, "height": 64}

IMG = "<img src=x onerror=window.__xss=1>"
SCRIPT = '"><script>window.__xss=1</script>'
SVG = "'><svg onload=window.__xss=1>"
ATTR = '" autofocus onfocus="window.__xss=1" x="'
EVIL = f"evil {IMG}"  # file stems (no "/" in a file name)
ATTR_STEM = f"attr{ATTR}"
EVIL_DIR = f"dir {SVG}"
BROKEN = f"broken {IMG}"
SECRET = "TOP-SECRET-7f3a"

UI_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/webui-assets/{path:path}",
             "/internal/progress", "/lora-ui/cards", "/lora-ui/state", "/lora-ui/card", "/lora-ui/thumb",
             "/lora-ui/metadata", "/lora-ui/blocks", "/lora-ui/editor", "/lora-ui/save", "/lora-ui/replace-preview",
             "/queue/status"}  # Gradio 3's queue probe that A1111 serves: a GET of the queue's length, open as there


def png(color: tuple[int, int, int], text: str = "") -> bytes:
    """A 32x32 PNG of one colour, with `text` in a text chunk."""
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", text)
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass
class Site:
    """The running server and the files the tests use."""

    base: str
    port: int
    webui: Any
    app: Any
    lora_dir: Path
    outside: Path
    keys: dict[str, str]  # stem -> card key (full filename)

    def sentinels(self) -> dict[str, bytes]:
        return {path.name: path.read_bytes() for path in sorted(self.outside.iterdir())}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("security")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=8)
    lora_dir = data / "models" / "Lora"
    model = tiny_loaded_model("SD1", seed=8)
    write_kohya_lora(lora_dir / "plain.safetensors", model, seed=1, metadata={"ss_output_name": "plain"})
    (lora_dir / "plain.png").write_bytes(png((0, 0, 200)))
    (lora_dir / "plain.json").write_text(json.dumps({"description": "an ordinary LoRA"}))

    filler = {f"f{i}": 1 for i in range(12)}  # short tags: long ones would be counted as caption words
    tags = {"set": {IMG: 9, SCRIPT: 7, SVG: 5, **filler}}
    write_kohya_lora(lora_dir / f"{EVIL}.safetensors", model, seed=2, only=4, metadata={
        "ss_tag_frequency": json.dumps(tags), "modelspec.title": SCRIPT, "modelspec.description": IMG,
        "ss_sd_model_name": SVG, "ss_network_module": ATTR})
    (lora_dir / f"{EVIL}.json").write_text(json.dumps({"description": SCRIPT, "activation text": IMG,
                                                       "negative text": ATTR, "notes": SVG, "sd version": "SD1"}))
    write_kohya_lora(lora_dir / f"{ATTR_STEM}.safetensors", model, seed=3, only=4, metadata={
        "ss_output_name": SVG, "ss_training_comment": SCRIPT, "ss_tag_frequency": json.dumps({"x": {ATTR: 4, **filler}})})
    (lora_dir / f"{ATTR_STEM}.txt").write_text(f"from a text file {IMG} {SCRIPT}", encoding="utf-8")
    write_kohya_lora(lora_dir / EVIL_DIR / "inside.safetensors", model, seed=4, only=2)
    (lora_dir / f"{BROKEN}.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + b"\0" * 64)

    outside = data / "outside"  # never reachable: sentinels
    write_kohya_lora(outside / "secret.safetensors", model, rank=4, alpha=16.0, seed=5, conv=True)
    (outside / "secret.json").write_text(json.dumps({"description": SECRET, "activation text": SECRET}))
    (outside / "secret.png").write_bytes(png((255, 0, 0), SECRET))
    (outside / "secret.txt").write_text(SECRET)
    shutil.copyfile(outside / "secret.safetensors", lora_dir / "control.safetensors")  # proves the effect shows
    shutil.copyfile(lora_dir / "plain.safetensors", lora_dir / "linked.safetensors")
    (lora_dir / "linked.png").symlink_to(outside / "secret.png")
    (lora_dir / "linked.json").symlink_to(outside / "secret.json")
    shutil.copyfile(lora_dir / "plain.safetensors", lora_dir / "linked_text.safetensors")
    (lora_dir / "linked_text.txt").symlink_to(outside / "secret.txt")

    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--api-auth", f"{AUTH[0]}:{AUTH[1]}"])
    load_startup_model(webui)
    app = create_app(webui)
    thread = ServerThread(app, port=0).start()
    keys = {entry.name: entry.filename for entry in webui.services["lora"].registry.entries()}
    try:
        yield Site(f"http://127.0.0.1:{thread.port}", thread.port, webui, app, lora_dir, outside, keys)
    finally:
        thread.stop()


@pytest.fixture
def api(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.base, auth=AUTH, timeout=60) as client:
        yield client


def detail(response: httpx.Response) -> str:
    """The error message of a 4xx answer (A1111's `{error, detail}` shape)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    body = response.json()
    assert isinstance(body.get("detail"), str) and body["detail"], body
    return body["detail"]


# ------------------------------------------------------------------------------------------ (a) escaping


INJECTED_JS = """() => {
    const found = [];
    for (const node of document.querySelectorAll('*')) {
        for (const attr of node.attributes) {
            if (attr.name.startsWith('on') && attr.value.includes('__xss')) found.push(`${node.tagName} ${attr.name}`);
        }
        if (node.tagName === 'SCRIPT' && node.textContent.includes('__xss')) found.push('SCRIPT');
        if (node.tagName === 'IMG' && node.getAttribute('src') === 'x') found.push('IMG src=x');
    }
    return {xss: typeof window.__xss, found};
}"""


def assert_nothing_ran(page: Any, where: str) -> None:
    result = page.evaluate(INJECTED_JS)
    assert result == {"xss": "undefined", "found": []}, (where, result)
    assert page.dialogs == [], (where, page.dialogs)


def card_locator(page: Any, name: str) -> Any:
    """The rendered card of the LoRA whose file stem is `name`."""
    index = page.evaluate("(name) => [...document.querySelectorAll('#txt2img_lora_page .lora-card')]"
                          ".findIndex((c) => c.dataset.name === name)", name)
    assert index >= 0, f"no card for {name!r}"
    return page.locator("#txt2img_lora_page .lora-card").nth(index)


def test_card_page_routes_return_escaped_html(site: Site, ledger: Any) -> None:
    """The HTML the server builds (metadata popup, editor file table, block chart, page) holds only escaped text."""
    with httpx.Client(base_url=site.base, timeout=60, auth=AUTH) as ui:  # UI writes need --api-auth
        key = site.keys[EVIL]
        popup = ui.get("/lora-ui/metadata", params={"key": key}).json()["html"]
        info = ui.get("/lora-ui/editor", params={"key": key}).json()["info_html"]
        blocks = ui.get("/lora-ui/blocks", params={"key": key}).json()["html"]
        attr_popup = ui.get("/lora-ui/metadata", params={"key": site.keys[ATTR_STEM]}).json()["html"]
        page = ui.get("/").text
        config = ui.get("/config").text
        cards = ui.get("/lora-ui/cards")
    checks = [(popup, p) for p in (IMG, SCRIPT, SVG, ATTR)] + [(info, IMG), (attr_popup, SCRIPT), (attr_popup, SVG),
                                                               (attr_popup, ATTR)]
    for text, payload in checks:
        assert html.escape(payload) in text, (payload, text[:500])
    for text in (popup, info, blocks, attr_popup, page, config):
        for marker in ("<img src=x onerror=window.__xss", "<script>window.__xss", "<svg onload=window.__xss",
                       'onfocus="window.__xss'):
            assert marker not in text, (marker, text[:300])
    # the card data is JSON, rendered with textContent by the page; it must never be served as HTML
    assert cards.headers["content-type"].startswith("application/json")
    assert IMG in cards.text  # the data itself is literal
    unknown = httpx.get(site.base + "/lora-ui/card", params={"key": IMG}, timeout=30)
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("application/json")
    ledger.bad_input(len(checks) + 6 * 4 + 1)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")
def test_payloads_in_files_metadata_and_sidecars_show_as_text_in_the_browser(site: Site, ledger: Any) -> None:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    surfaces = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300},  # UI writes need --api-auth
                                    http_credentials={"username": AUTH[0], "password": AUTH[1]})
            page.dialogs = []
            page.errors = []
            page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
            page.on("pageerror", lambda error: page.errors.append(str(error)))
            page.goto(site.base + "/")
            page.click("#txt2img_lora_tab-button", timeout=60_000)  # the Lora tab beside "Generation"
            page.wait_for_selector("#txt2img_lora_page[data-loaded=true] .lora-card", timeout=60_000)
            assert_nothing_ran(page, "page load")

            # cards: names, trigger words, descriptions, the path in the tooltip; folder tree; unreadable files
            evil, attr = card_locator(page, EVIL), card_locator(page, ATTR_STEM)
            assert evil.locator(".lora-card-name").text_content() == EVIL
            assert evil.locator(".lora-card-triggers").text_content() == IMG
            assert evil.locator(".lora-card-desc").text_content() == SCRIPT
            assert attr.locator(".lora-card-name").text_content() == ATTR_STEM
            assert attr.locator(".lora-card-triggers").text_content() == f"{ATTR}, f0, f1, f10, f11"  # top tags
            assert attr.locator(".lora-card-desc").text_content() == f"from a text file {IMG} {SCRIPT}"
            assert evil.get_attribute("title").startswith(f"Lora/{EVIL}.safetensors")
            assert SVG in page.inner_text("#txt2img_lora_page .lora-tree")
            page.click("#txt2img_lora_page .lora-errors summary")
            assert f"{BROKEN}.safetensors" in page.inner_text("#txt2img_lora_page .lora-errors")
            surfaces += 9
            for locator in (evil, attr, page.locator("#txt2img_lora_page .lora-folder").last):
                locator.hover()
            page.fill("#txt2img_lora_extra_search", "onerror")  # search over the payload text
            page.wait_for_function("document.querySelectorAll('#txt2img_lora_page .lora-card').length === 2")
            page.fill("#txt2img_lora_extra_search", "")
            assert_nothing_ran(page, "cards, hover, search")

            # metadata popup: title, tags, summary rows and every raw key
            evil = card_locator(page, EVIL)
            evil.hover()
            evil.locator(".lora-card-meta").click()
            page.wait_for_selector(".lora-metadata .lora-meta")
            page.click(".lora-metadata details.lora-meta-all summary")
            page.wait_for_function("!document.querySelector('.lora-metadata .lora-blocks-slot')"
                                   ".innerText.includes('Computing')")
            text = page.inner_text(".lora-metadata")
            for payload in (EVIL, IMG, SCRIPT, SVG, ATTR):
                assert payload in text, payload
            surfaces += 5
            for chip in page.locator(".lora-metadata .lora-tag").all():
                chip.hover()
            assert_nothing_ran(page, "metadata popup")
            page.keyboard.press("Escape")
            attr = card_locator(page, ATTR_STEM)
            attr.hover()
            attr.locator(".lora-card-meta").click()
            page.wait_for_selector(".lora-metadata .lora-meta")
            page.click(".lora-metadata details.lora-meta-all summary")
            text = page.inner_text(".lora-metadata")
            assert SVG in text and SCRIPT in text and ATTR in text  # ss_output_name, training comment, tag
            surfaces += 3
            assert_nothing_ran(page, "metadata popup of the second file")
            page.keyboard.press("Escape")

            # edit dialog: the sidecar fields arrive as values, tags as chips; saving writes the literal text
            evil = card_locator(page, EVIL)
            evil.hover()
            evil.locator(".lora-card-edit").click()
            page.wait_for_selector(".lora-edit .lora-edit-form")
            form = page.locator(".lora-edit .lora-edit-form")
            values = {name: form.locator(f"textarea[name='{name}']").input_value()
                      for name in ("description", "activation text", "negative text", "notes")}
            assert values == {"description": SCRIPT, "activation text": IMG, "negative text": ATTR, "notes": SVG}
            chips = form.locator(".lora-tag")
            assert [chip.get_attribute("data-tag") for chip in chips.all()][:3] == [IMG, SCRIPT, SVG]
            assert chips.nth(0).inner_text().startswith(IMG)
            assert EVIL in page.inner_text(".lora-edit .lora-edit-info")
            surfaces += 6
            chips.nth(0).click()  # removes IMG from the activation text
            chips.nth(1).click()  # adds SCRIPT
            form.locator("textarea[name='notes']").fill(f"{SVG} {IMG}")
            page.click(".lora-edit .lora-edit-save")
            page.wait_for_selector(".lora-edit", state="detached")
            saved = json.loads((site.lora_dir / f"{EVIL}.json").read_text(encoding="utf-8"))
            assert saved == {"description": SCRIPT, "activation text": SCRIPT, "negative text": ATTR,
                             "notes": f"{SVG} {IMG}", "sd version": "SD1", "preferred weight": 0.0}
            page.wait_for_function("(t) => [...document.querySelectorAll('#txt2img_lora_page .lora-card-triggers')]"
                                   ".some((n) => n.textContent === t)", arg=SCRIPT)
            surfaces += 2
            assert_nothing_ran(page, "edit dialog and save")

            # click-to-insert a payload alias, then generate: the infotext shows the prompt as text
            card_locator(page, ATTR_STEM).locator(".lora-card-preview").click()
            prompt = page.input_value("#txt2img_prompt textarea")
            assert prompt == f"<lora:{ATTR_STEM}:1>", prompt  # the alias holds `>` (tag syntax): the stem instead
            page.fill("#txt2img_prompt textarea", f"{prompt} {IMG} {SCRIPT}")
            page.click("#txt2img_generation_tab-button")  # back to the parameters beside the Lora tab
            for elem_id, value in (("txt2img_width", "64"), ("txt2img_height", "64"), ("txt2img_steps", "2")):
                page.fill(f"#{elem_id} input[type=number]", value)
                page.press(f"#{elem_id} input[type=number]", "Enter")
            page.click("#txt2img_generate")
            page.wait_for_function("document.querySelector('#html_info_txt2img').innerText.includes('Steps: 2')",
                                   timeout=90_000)
            info = page.inner_text("#html_info_txt2img")
            assert info.startswith(f"<lora:{ATTR_STEM}:1> {IMG} {SCRIPT}"), info[:300]
            surfaces += 3
            assert_nothing_ran(page, "generation info")
            assert page.errors == [], page.errors
        finally:
            browser.close()
    ledger.bad_input(surfaces)


# ------------------------------------------------------------------------------------------ (b) paths


def path_names(site: Site) -> list[str]:
    """Names that are paths (or path tricks) aimed at the sentinel files outside the Lora folders."""
    secret = site.outside / "secret"
    return ["../../etc/passwd", "/etc/passwd", "../outside/secret", "../../outside/secret", str(secret),
            f"{secret}.safetensors", str(site.outside / "secret.json"), "..\\outside\\secret", "..\\..\\outside\\secret",
            "plain/../../outside/secret", "sub/../../../outside/secret", "C:\\Windows\\win.ini", "\\\\host\\share\\x",
            "secret\x00.png", "plain\x00/../../outside/secret", "..", "../", "%2e%2e%2foutside%2fsecret",
            "%252e%252e%252foutside%252fsecret", "..%2foutside%2fsecret", "....//....//outside/secret",
            "\u2025/outside/secret", "\uff0e\uff0e/outside/secret", "~/secret", "file:///etc/passwd"]


def test_api_names_cannot_leave_the_lora_folders(site: Site, api: httpx.Client, ledger: Any) -> None:
    before = site.sentinels()
    tried = 0
    for name in path_names(site):
        for path in ("/sdapi/v1/lora", "/sdapi/v1/lora/preview", "/sdapi/v1/lora/thumb"):
            for param in ("name", "lora") if path == "/sdapi/v1/lora" else ("name",):
                response = api.get(path, params={param: name})
                message = detail(response)
                assert response.status_code in (400, 404), (path, name, response.status_code)
                assert ("is a path" in message) if response.status_code == 400 else ("not found" in message)
                assert SECRET not in response.text and "root:" not in response.text
                tried += 1
        response = api.post("/sdapi/v1/lora/metadata", json={"name": name, "notes": "pwned", "description": "pwned"})
        assert response.status_code in (400, 404) and detail(response), (name, response.status_code)
        tried += 1
    # the query string decoded by the server once: %2e%2e%2f is "../", a path; %252e is a literal name
    for raw, status in (("%2e%2e%2foutside%2fsecret", 400), ("..%2F..%2Foutside%2Fsecret", 400),
                        ("%2Fetc%2Fpasswd", 400), ("%252e%252e%252fsecret", 404), ("plain%00", 400)):
        for path in ("/sdapi/v1/lora", "/sdapi/v1/lora/preview", "/sdapi/v1/lora/thumb"):
            response = api.get(f"{site.base}{path}?name={raw}")
            assert response.status_code == status and detail(response), (path, raw, response.status_code)
            tried += 1
    ledger.bad_input(tried)
    ledger.intact(site.sentinels() == before, "a file outside the Lora folders changed")
    assert not any(site.lora_dir.parent.glob("outside/*.tmp")) and not (site.lora_dir.parent / "secret.json").exists()


def test_card_keys_are_only_registered_files(site: Site, ledger: Any) -> None:
    """The card page's routes take the full filename of a registered LoRA: any other path is unknown (404)."""
    before = site.sentinels()
    keys = [str(site.outside / "secret.safetensors"), str(site.outside / "secret.json"), "/etc/passwd",
            str(site.lora_dir / ".." / "outside" / "secret.safetensors"), site.keys["plain"] + "\x00",
            str(site.lora_dir / "plain.json"), str(site.lora_dir / "plain.png"), "../outside/secret.safetensors"]
    tried = 0
    with httpx.Client(base_url=site.base, timeout=60, auth=AUTH) as ui:  # UI writes need --api-auth
        for key in keys:
            for route in ("card", "thumb", "metadata", "blocks", "editor"):
                response = ui.get(f"/lora-ui/{route}", params={"key": key})
                assert response.status_code == 404 and "no Lora file" in response.json()["detail"], (route, key)
                assert SECRET not in response.text and "root:" not in response.text
                tried += 1
            for route, body in (("save", {"key": key, "fields": {"notes": "pwned"}}),
                                ("replace-preview", {"key": key})):
                response = ui.post(f"/lora-ui/{route}", json=body)
                assert response.status_code == 404, (route, key, response.status_code)
                tried += 1
    ledger.bad_input(tried)
    ledger.intact(site.sentinels() == before, "a file outside the Lora folders changed")


def test_symlinks_to_outside_files_are_refused_everywhere(site: Site, api: httpx.Client, ledger: Any) -> None:
    before = site.sentinels()
    api.post("/sdapi/v1/refresh-loras")
    for path in ("/sdapi/v1/lora/preview", "/sdapi/v1/lora/thumb"):
        assert "outside the Lora folders" in detail(api.get(path, params={"name": "linked"}))
    refused = api.post("/sdapi/v1/lora/metadata", json={"name": "linked", "notes": "through the link"})
    assert refused.status_code == 403 and "outside the Lora folders" in detail(refused)
    details = api.get("/sdapi/v1/lora", params={"name": "linked"})
    assert details.status_code == 200 and SECRET not in details.text and details.json()["preview_url"] is None
    with httpx.Client(base_url=site.base, timeout=60, auth=AUTH) as ui:  # UI writes need --api-auth  # the card page's own routes, same rule
        key = site.keys["linked"]
        thumb = ui.get("/lora-ui/thumb", params={"key": key})
        assert thumb.status_code == 403 and thumb.content != (site.outside / "secret.png").read_bytes()
        saved = ui.post("/lora-ui/save", json={"key": key, "fields": {"notes": "through the link"}})
        assert saved.status_code == 403 and "outside the Lora folders" in saved.json()["detail"]
        text_key = site.keys["linked_text"]  # a `.txt` description symlinked to a file elsewhere is not read
        card = ui.get("/lora-ui/card", params={"key": text_key}).json()["card"]
        editor = ui.get("/lora-ui/editor", params={"key": text_key}).json()
        assert card["description"] == "" and editor["fields"]["description"] == ""
        # the registry ignores `linked.json` (a symlink to outside): no card, editor or trigger word shows it
        linked_card = ui.get("/lora-ui/card", params={"key": key}).json()["card"]
        assert linked_card["description"] == "" and linked_card["activation"] == ""
        assert SECRET not in ui.get("/lora-ui/cards").text
        assert SECRET not in ui.get("/lora-ui/editor", params={"key": key}).text
    assert (site.lora_dir / "linked.json").is_symlink()
    ledger.bad_input(11)
    ledger.intact(site.sentinels() == before, "a file outside the Lora folders changed through a symlink")


def test_a_symlinked_lora_folder_serves_only_its_own_companions(site: Site, api: httpx.Client, ledger: Any) -> None:
    """`models/Lora/shared -> <store>`: the preview, `.txt` and sidecar beside a LoRA's real file are served, shown and
    editable through the API and the card page; companions in that folder symlinked to the sentinels are refused."""
    before = site.sentinels()
    store = site.lora_dir.parent / "shared-store"
    store.mkdir(exist_ok=True)
    shutil.copyfile(site.lora_dir / "plain.safetensors", store / "shared_ok.safetensors")
    (store / "shared_ok.png").write_bytes(png((0, 160, 0)))
    (store / "shared_ok.txt").write_text("shared description")
    (store / "shared_ok.json").write_text(json.dumps({"activation text": "shared trigger"}))
    shutil.copyfile(site.lora_dir / "plain.safetensors", store / "shared_escape.safetensors")
    for ext in ("png", "json", "txt"):
        (store / f"shared_escape.{ext}").symlink_to(site.outside / f"secret.{ext}")
    link = site.lora_dir / "shared"
    link.symlink_to(store, target_is_directory=True)
    try:
        api.post("/sdapi/v1/refresh-loras")
        ok = api.get("/sdapi/v1/lora", params={"name": "shared/shared_ok"}).json()
        assert ok["user_metadata"] == {"activation text": "shared trigger"}
        assert api.get(ok["preview_url"]).content == (store / "shared_ok.png").read_bytes()
        assert api.get(ok["thumb_url"]).headers["content-type"] == "image/png"
        edited = api.post("/sdapi/v1/lora/metadata", json={"name": "shared/shared_ok", "notes": "api"})
        assert edited.status_code == 200 and json.loads((store / "shared_ok.json").read_text())["notes"] == "api"
        for path in ("/sdapi/v1/lora/preview", "/sdapi/v1/lora/thumb"):
            response = api.get(path, params={"name": "shared/shared_escape"})
            assert response.status_code == 403 and "outside the Lora folders" in detail(response)
        escape = api.get("/sdapi/v1/lora", params={"name": "shared/shared_escape"})
        assert SECRET not in escape.text and escape.json()["preview_url"] is None
        refused = api.post("/sdapi/v1/lora/metadata", json={"name": "shared/shared_escape", "notes": "x"})
        assert refused.status_code == 403 and "outside the Lora folders" in detail(refused)
        with httpx.Client(base_url=site.base, timeout=60, auth=AUTH) as ui:  # UI writes need --api-auth
            ok_key, escape_key = str(link / "shared_ok.safetensors"), str(link / "shared_escape.safetensors")
            card = ui.get("/lora-ui/card", params={"key": ok_key}).json()["card"]
            assert card["description"] == "shared description" and card["activation"] == "shared trigger"
            # the card picture is made on the server (a PNG of the same pixels at this small size)
            assert same_pixels(ui.get(card["preview"]).content, (store / "shared_ok.png").read_bytes())
            saved = ui.post("/lora-ui/save", json={"key": ok_key, "fields": {"notes": "ui"}})
            assert saved.status_code == 200 and json.loads((store / "shared_ok.json").read_text())["notes"] == "ui"
            card = ui.get("/lora-ui/card", params={"key": escape_key}).json()["card"]
            assert card["description"] == "" and card["activation"] == ""
            assert ui.get("/lora-ui/thumb", params={"key": escape_key}).status_code == 403
            saved = ui.post("/lora-ui/save", json={"key": escape_key, "fields": {"notes": "through the link"}})
            assert saved.status_code == 403 and "outside the Lora folders" in saved.json()["detail"]
            assert SECRET not in ui.get("/lora-ui/cards").text
    finally:
        link.unlink()
        api.post("/sdapi/v1/refresh-loras")
    assert all((store / f"shared_escape.{ext}").is_symlink() for ext in ("png", "json", "txt"))
    ledger.bad_input(7)
    ledger.intact(site.sentinels() == before, "a file outside the Lora folders changed through a linked folder")


def test_a_prompt_cannot_load_a_lora_by_path(site: Site, api: httpx.Client, ledger: Any) -> None:
    def image(prompt: str) -> tuple[bytes, str]:
        response = api.post("/sdapi/v1/txt2img", json={"prompt": prompt, **TINY})
        assert response.status_code == 200, response.text[:300]
        body = response.json()
        pixels = Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).convert("RGB").tobytes()
        return pixels, json.loads(body["info"])["infotexts"][0]

    plain, _ = image("a field")
    control, infotext = image("a field <lora:control:1>")  # the same file, inside: it does change the image
    assert control != plain and "Lora hashes: \"control: " in infotext
    secret = site.outside / "secret"
    names = ["../outside/secret", "../../outside/secret", str(secret), f"{secret}.safetensors",
             "..\\outside\\secret", "sub/../../outside/secret", "%2e%2e/outside/secret"]
    for name in names:
        pixels, infotext = image(f"a field <lora:{name}:1>")
        ledger.intact(pixels == plain, f"<lora:{name}:1> changed the image: a file outside the folders was loaded")
        assert "Lora hashes" not in infotext, infotext
    ledger.bad_input(len(names))


# ------------------------------------------------------------------------------------------ (c) auth


def sdapi_routes(site: Site) -> list[tuple[str, str]]:
    """(method, path) of every route under /sdapi/ in the app object, checked against /openapi.json."""
    routes: set[tuple[str, str]] = set()
    outside: set[str] = set()
    for route in site.app.routes:
        path = getattr(route, "path", "")
        if path.startswith("/sdapi"):
            assert isinstance(route, APIRoute), f"{path} is a {type(route).__name__}: not covered by the API auth"
            routes |= {(method, path) for method in route.methods}
        elif isinstance(route, (APIRoute, Route)):
            outside.add(path)
        elif isinstance(route, WebSocketRoute):
            raise AssertionError(f"websocket route {path}: auth does not cover websockets")
        else:
            assert isinstance(route, Mount) and route.path == "", f"unexpected {route!r}"  # the Gradio UI at /
    assert outside <= UI_ROUTES, f"routes outside /sdapi/ (no API auth): {sorted(outside - UI_ROUTES)}"
    spec = httpx.get(site.base + "/openapi.json", timeout=30).json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
                  if path.startswith("/sdapi")}
    assert documented == routes, documented ^ routes
    assert len(routes) >= 25
    return sorted(routes)


def raw_request(port: int, method: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP/1.1 request with the target sent exactly as given (no client-side normalisation)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close", "Content-Length: 0"]
    lines += [f"{key}: {value}" for key, value in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def same_pixels(first: bytes, second: bytes) -> bool:
    """Two encoded images hold the same RGB pixels."""
    def rgb(data: bytes) -> tuple:
        with Image.open(io.BytesIO(data)) as image:
            return image.size, image.convert("RGB").tobytes()

    return rgb(first) == rgb(second)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_api_auth_is_enforced_on_every_api_route(site: Site, ledger: Any) -> None:
    routes = sdapi_routes(site)
    user, password = AUTH
    wrong = [None, basic(user, "wrong"), basic("someone", password), basic(user.upper(), password),
             basic(user, password + " "), basic(user, ""), basic("", ""), basic(user, password[:-1]),
             "Basic " + base64.b64encode(user.encode()).decode(), "Basic !!!not-base64", f"Bearer {password}",
             f"basic {base64.b64encode(f'{user}:{password}x'.encode()).decode()}", f"Basic {user}:{password}"]
    tried = 0
    with httpx.Client(base_url=site.base, timeout=60) as client:
        for method, path in routes:
            for header in wrong:
                headers = {"Authorization": header} if header else {}
                response = client.request(method, path, params={"name": "plain"}, headers=headers, json=[])
                assert response.status_code == 401, (method, path, header, response.status_code)
                assert response.json()["error"] == "Unauthorized" and "Basic" in response.headers["www-authenticate"]
                tried += 1
        answered = {}
        for method, path in routes:  # with the right credentials: anything but 401 (bodies are invalid on purpose)
            response = client.request(method, path, params={"name": "plain"}, auth=AUTH, json=[])
            answered[(method, path)] = response.status_code
            ledger.served()
        client.post("/sdapi/v1/reload-checkpoint", auth=AUTH)  # the loop also called unload-checkpoint
    assert all(status != 401 and status < 500 for status in answered.values()), answered
    # path tricks do not reach an API route without credentials
    tricks = ["/sdapi/v1/loras", "/sdapi/v1/loras/", "//sdapi/v1/loras", "/sdapi//v1/loras", "/SDAPI/v1/loras",
              "/%73dapi/v1/loras", "/sdapi/v1/%6coras", "/x/../sdapi/v1/loras", "/./sdapi/v1/loras",
              "/sdapi/v1/./loras", "/sdapi/./v1/loras?name=..", "/sdapi/v1/loras;x", "/sdapi/v1/loras%00",
              "/sdapi%2fv1%2floras", "/sdapi", "/sdapi/", "http://127.0.0.1/sdapi/v1/loras"]
    for target in tricks:
        for method in ("GET", "HEAD", "OPTIONS", "POST"):
            status, data = raw_request(site.port, method, target)
            assert status in (401, 404, 405), (method, target, status, data[:200])
            assert b"plain.safetensors" not in data
            tried += 1
    ledger.bad_input(tried)


# ------------------------------------------------------------------------------------------ (d) bind


@pytest.fixture(scope="module", autouse=True)
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, tuple[int, subprocess.Popen, Path]]]:
    """`launch.py` without and with `--listen` (API only, no model), started when the module starts."""
    started: dict[bool, tuple[int, subprocess.Popen, Path]] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    try:
        for listen in (False, True):
            folder = tmp_path_factory.mktemp("listen" if listen else "local")
            port = free_port()
            log_path = folder / "server.log"
            argv = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", str(folder),
                    "--nowebui", "--no-embedded-default", *(["--listen"] if listen else [])]
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(argv, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            started[listen] = (port, process, log_path)
        yield started
    finally:
        stop_servers(*(process for _, process, _ in started.values()))


@pytest.mark.slow
def test_server_binds_localhost_unless_listen(launched: dict[bool, tuple[int, subprocess.Popen, Path]]) -> None:
    for listen, expected in ((False, {"0100007F"}), (True, {"00000000"})):  # 127.0.0.1 / 0.0.0.0 (hex, /proc/net)
        port, process, log_path = launched[listen]
        wait_until_up(f"http://127.0.0.1:{port}/sdapi/v1/progress", process, timeout=120)
        deadline = time.monotonic() + 10
        while listening_addresses(port) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        assert listening_addresses(port) == expected, (listen, listening_addresses(port), log_path.read_text()[-2000:])
        assert f"http://{'0.0.0.0' if listen else '127.0.0.1'}:{port}" in log_path.read_text()
