"""Prompt styles: styles.csv in A1111's format, merging with and without `{prompt}`, the request's `styles` in
txt2img (infotext holds the merged prompts), pasting an infotext back (`Styles array`, the `infotext_styles`
modes), malformed files (warnings, the other styles still load), `GET /sdapi/v1/prompt-styles`, and the txt2img
page's styles box in Chromium."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from modules.host import WebUI
from modules.infotext import parse_generation_parameters
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from modules.styles import StyleDatabase, apply_styles, infotext_pasted_styles, merge_prompt, read_styles_csv
from modules.webui_server import ServerThread, create_app
from tests.helpers.model_factory import write_single_file
from tests.helpers.servers import CHROMIUM, CHROMIUM_ARGS

STYLES_CSV = (
    "name,prompt,negative_prompt\n"
    "Cinematic,\"cinematic still of {prompt}, film grain\",\"cartoon, drawing\"\n"
    "Sharp,\"sharp focus, 8k\",blurry\n"
    "\"Only negative\",,\"watermark, text\"\n"
)


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    (root / "styles.csv").write_text(STYLES_CSV, encoding="utf-8")
    ui = WebUI.create(["--data-dir", str(root), "--no-embedded-default"], load_extensions_now=False)
    write_single_file(ui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    ui.models.load("tiny.safetensors")
    return ui


def test_merge_as_a1111():
    assert merge_prompt("cinematic still of {prompt}, film grain", "a cat") == "cinematic still of a cat, film grain"
    assert merge_prompt("sharp focus", "a cat") == "a cat, sharp focus"
    assert merge_prompt("sharp focus", "  ") == "sharp focus"
    assert merge_prompt("", "a cat") == "a cat"
    assert apply_styles("a cat", ["{prompt}, one", "two"]) == "a cat, one, two"


def test_file_loads_in_order_with_all_columns(webui):
    db = webui.styles
    assert db.names() == ["Cinematic", "Sharp", "Only negative"]
    assert db.get("Sharp").prompt == "sharp focus, 8k" and db.get("Sharp").negative_prompt == "blurry"
    assert db.get("Only negative").prompt == "" and db.warnings == []


def test_txt2img_applies_styles_and_the_infotext_records_the_merged_prompts(webui):
    p = StableDiffusionProcessingTxt2Img(prompt="a cat", negative_prompt="ugly", styles=["Cinematic", "Sharp", "Nope"],
                                         seed=1, steps=2, width=64, height=64, do_not_save_samples=True)
    processed = process_images(webui, p)
    params = parse_generation_parameters(processed.infotexts[0])
    assert params["Prompt"] == "cinematic still of a cat, film grain, sharp focus, 8k"
    assert params["Negative prompt"] == "ugly, cartoon, drawing, blurry"
    assert processed.styles == ["Cinematic", "Sharp", "Nope"]
    assert any("Style 'Nope' not found" in c for c in processed.comments)
    plain = process_images(webui, StableDiffusionProcessingTxt2Img(
        prompt="cinematic still of a cat, film grain, sharp focus, 8k", negative_prompt="ugly, cartoon, drawing, blurry",
        seed=1, steps=2, width=64, height=64, do_not_save_samples=True))
    assert processed.images[0].tobytes() == plain.images[0].tobytes()  # the same conditioning as typing it


@pytest.mark.parametrize(("mode", "styles", "prompt"), [
    ("Apply if any", ["Cinematic", "Sharp"], "a cat"),
    ("Apply", ["Cinematic", "Sharp"], "a cat"),
    ("Discard", None, "a cat"),
    ("Ignore", None, "cinematic still of a cat, film grain, sharp focus, 8k"),
])
def test_pasted_infotext_gives_the_styles_back(webui, mode, styles, prompt):
    params = {"Prompt": "cinematic still of a cat, film grain, sharp focus, 8k",
              "Negative prompt": "ugly, cartoon, drawing, blurry"}
    infotext_pasted_styles(webui.styles, mode, params)
    assert params.get("Styles array") == styles
    assert params["Prompt"] == prompt
    if mode != "Ignore":
        assert params["Negative prompt"] == "ugly"
    nothing = {"Prompt": "a dog", "Negative prompt": ""}
    infotext_pasted_styles(webui.styles, mode, nothing)
    assert nothing.get("Styles array") == ([] if mode == "Apply" else None)


def test_malformed_file_warns_and_keeps_the_other_styles(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(b"name,prompt,negative_prompt\n"
                     b"Good,\"good, {prompt}\",bad\n"
                     b",\"no name\",x\n"
                     b"Broken,\"unterminated quote\n"
                     b"Good,dupe,dupe\n"
                     b"Also good,fine,\n"
                     b"Nul\x00s,with nul,\n")
    db = StyleDatabase(path)
    assert db.get("Good").prompt == "good, {prompt}"
    joined = " | ".join(db.warnings)
    assert "line 3: row without a style name" in joined
    assert "line 4: malformed CSV row skipped" in joined
    assert "line 5: duplicate style 'Good' skipped" in joined
    assert "NUL bytes" in joined
    assert db.names() == ["Good", "Also good", "Nuls"]
    (tmp_path / "headless.csv").write_text("title,prompt\nx,y\n", encoding="utf-8")
    styles, warnings = read_styles_csv(tmp_path / "headless.csv")
    assert styles == {} and "no 'name' column" in warnings[0]
    assert read_styles_csv(tmp_path / "missing.csv") == ({}, [])


def test_prompt_styles_route_and_styles_in_requests(webui, tmp_path):
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        base = f"http://127.0.0.1:{thread.port}"
        items = httpx.get(base + "/sdapi/v1/prompt-styles", timeout=30).json()
        assert items[1] == {"name": "Sharp", "prompt": "sharp focus, 8k", "negative_prompt": "blurry"}
        body = {"prompt": "a cat", "styles": ["Sharp"], "steps": 2, "width": 64, "height": 64, "seed": 3}
        result = httpx.post(base + "/sdapi/v1/txt2img", json=body, timeout=120).json()
        infotext = json.loads(result["info"])["infotexts"][0]
        assert infotext.startswith("a cat, sharp focus, 8k\nNegative prompt: blurry\n")
        again = httpx.post(base + "/sdapi/v1/txt2img", timeout=120,
                           json={"infotext": infotext, "steps": 2, "width": 64, "height": 64}).json()
        assert json.loads(again["info"])["styles"] == ["Sharp"]  # the style text went back into `styles`
        assert again["parameters"]["styles"] == ["Sharp"] and again["parameters"]["prompt"] == "a cat"
        assert json.loads(again["info"])["infotexts"][0] == infotext  # the same recipe, styles included
        styles_file = webui.styles.path
        original = styles_file.read_text(encoding="utf-8")
        styles_file.write_text(original + "Added,\"added, {prompt}\",\n", encoding="utf-8")
        try:
            names = [x["name"] for x in httpx.get(base + "/sdapi/v1/prompt-styles", timeout=30).json()]
            assert names[-1] == "Added"  # the file is read again when it changed
        finally:
            styles_file.write_text(original, encoding="utf-8")
            webui.styles.reload()
    finally:
        thread.stop()


def test_styles_box_in_the_txt2img_page(webui):
    if not CHROMIUM.exists():
        pytest.skip("no Chromium")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{thread.port}/", wait_until="networkidle", timeout=60000)
            page.locator("#txt2img_prompt textarea").fill("a cat")
            page.locator("#txt2img_styles input").click()
            page.get_by_role("option", name="Cinematic").click()
            page.keyboard.press("Escape")
            page.locator("#txt2img_style_apply").click()
            page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('film')",
                                   timeout=30000)
            assert page.locator("#txt2img_prompt textarea").input_value() == "cinematic still of a cat, film grain"
            assert page.locator("#txt2img_neg_prompt textarea").input_value() == "cartoon, drawing"
            browser.close()
    except subprocess.SubprocessError as exc:  # pragma: no cover - the browser could not start
        pytest.fail(f"Chromium did not start: {exc}")
    finally:
        thread.stop()
