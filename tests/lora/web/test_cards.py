"""The Lora page on the server side: card data, previews, descriptions, escaping, routes, editor, block strength.

No browser here (tests/test_lora_tab.py drives Chromium): the page object and its routes are exercised directly
through FastAPI's TestClient on a WebUI built without the embedded demo files, with LoRA files written by the tests.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from lorakit.formats.blocks import BlockLayout
from lorakit.library.registry import training_tags
from lorakit.library.sidecars import save_user_metadata
from lorakit.web.block_chart import block_label, compute_block_strength, render_block_strength
from lorakit.web.card_metadata import dataset_size, resolution_buckets
from modules.host import WebUI
from modules.webui_server import create_app
from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora

XSS = "<img src=x onerror=alert(1)>"


def png_bytes(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buffer, format="PNG")
    return buffer.getvalue()


def tiny_lora(path: Path, metadata: dict[str, str] | None = None) -> None:
    """A minimal valid LoRA file (one SD1 layer) with the given metadata."""
    key = "lora_unet_down_blocks_0_attentions_0_proj_in"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"{key}.lora_down.weight": torch.zeros(2, 8), f"{key}.lora_up.weight": torch.zeros(8, 2)},
              str(path), metadata=metadata or {})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("lora-cards")
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default"])
    lora_dir = webui.paths.lora_dir
    model = tiny_loaded_model("SD1")
    deltas = write_kohya_lora(lora_dir / "strong.safetensors", model, metadata={
        "ss_output_name": "strong-alias", "ss_network_module": "networks.lora", "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": "<script>alert(3)</script>", "ss_training_started_at": "1700000000",
        "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [512, 768], "count": 30},
                                                  "1": {"resolution": [768, 512], "count": 12}}}),
        "ss_dataset_dirs": json.dumps({"a": {"img_count": 30}, "b": {"img_count": 12}}),
        "ss_tag_frequency": json.dumps({"a": {"red hair": 20, "<b>x</b>": 3}, "b": {"red hair": 5, "smile": 9}}),
    })
    (lora_dir / "strong.json").write_text(json.dumps({"description": XSS, "activation text": "red hair",
                                                      "preferred weight": 0.7, "tool": {"kept": True}}))
    tiny_lora(lora_dir / "sub" / "plain.safetensors")
    (lora_dir / "sub" / "plain.description.txt").write_text("from the description file", encoding="utf-8")
    (lora_dir / "sub" / "plain.preview.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (lora_dir / "sub" / "plain.png").write_bytes(png_bytes((1, 2, 3)))
    tiny_lora(lora_dir / "sub" / "texty.safetensors")
    (lora_dir / "sub" / "texty.txt").write_text("from the txt file", encoding="utf-8")
    cover = base64.b64encode(png_bytes((9, 9, 9))).decode()
    tiny_lora(lora_dir / "covered.safetensors", {"ssmd_cover_images": json.dumps([cover]),
                                                 "ss_base_model_version": "sdxl_base_v1-0"})
    page = webui.services["lora_page"]
    page.refresh()
    webui.services["lora"].set_model(model)
    client = TestClient(create_app(webui, ui=False), base_url="http://127.0.0.1")  # the Host check: a local name
    yield webui, page, client, model, deltas


def cards_by_name(client: TestClient) -> dict[str, dict]:
    response = client.get("/lora-ui/cards")
    assert response.status_code == 200
    return {card["name"]: card for card in response.json()["cards"]}


def test_shell_html_is_escaped_and_has_a1111_ids(env):
    _, page, _, _, _ = env
    shell = page.create_html("txt2img")
    for element_id in ("txt2img_lora_page", "txt2img_lora_extra_search", "txt2img_lora_extra_sort"):
        assert f"id='{element_id}'" in shell
    hostile = page.create_html("x'><script>alert(1)</script>")
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
    assert "onclick" not in shell and "onerror" not in shell


def test_card_fields_previews_and_descriptions(env):
    _, _, client, _, _ = env
    cards = cards_by_name(client)
    assert list(cards) == ["covered", "strong", "plain", "texty"]  # scan order: root files, then sub/
    strong = cards["strong"]
    assert strong["alias"] == "strong-alias"
    assert strong["path"] == "Lora/strong.safetensors"
    assert strong["description"] == XSS  # raw text: the browser puts it into textContent
    assert strong["activation"] == "red hair" and strong["weight"] == 0.7
    assert strong["sd"] == "SD1" and strong["algorithm"] == "LoRA"
    assert strong["tags"][:2] == ["red hair", "smile"]
    assert strong["preview"] == ""
    plain = cards["plain"]
    assert plain["dir"] == "Lora/sub"
    assert plain["description"] == "from the description file"
    assert cards["texty"]["description"] == "from the txt file"
    assert plain["preview"].startswith("/lora-ui/thumb?key=")
    thumb = client.get(plain["preview"])
    assert thumb.status_code == 200 and thumb.content == png_bytes((1, 2, 3))  # <name>.png before .preview.jpg
    assert cards["covered"]["sd"] == "SDXL"
    cover = client.get(cards["covered"]["preview"])
    assert cover.status_code == 200 and cover.headers["content-type"] == "image/png"
    assert cover.content == png_bytes((9, 9, 9))


def test_cards_route_gzip_etag_and_unknown_keys(env):
    _, _, client, _, _ = env
    first = client.get("/lora-ui/cards", headers={"Accept-Encoding": "gzip"})
    assert first.headers["content-encoding"] == "gzip"
    etag = first.headers["etag"]
    assert client.get("/lora-ui/cards", headers={"If-None-Match": etag}).status_code == 304
    raw = client.get("/lora-ui/cards", headers={"Accept-Encoding": "identity"})
    assert json.loads(raw.content)["version"] == json.loads(gzip.decompress(gzip.compress(raw.content)))["version"]
    for route in ("thumb", "metadata", "blocks", "editor", "card"):
        response = client.get(f"/lora-ui/{route}", params={"key": "/etc/passwd"})
        assert response.status_code == 404, route


def test_metadata_popup_is_readable_and_escaped(env):
    webui, page, client, _, _ = env
    entry = page.entry(str(webui.paths.lora_dir / "strong.safetensors"))
    body = client.get("/lora-ui/metadata", params={"key": entry.filename}).json()["html"]
    assert "<script>" not in body and "&lt;script&gt;alert(3)&lt;/script&gt;" in body
    assert "<b>" not in body and "&lt;b&gt;x&lt;/b&gt;" in body
    for expected in ("Resolution buckets", "512x768 (30), 768x512 (12)", "Dataset size", "<td>42</td>",
                     "networks.lora", "2023-11-14 22:13 UTC", "red hair<span class='lora-tag-count'>25</span>",
                     "lora-blocks-slot"):
        assert expected in body, expected


def test_training_statistics():
    assert training_tags({"ss_tag_frequency": {"a": {"x": 2, " y ": 5}, "b": {"x": 4}}}) == [("x", 6), ("y", 5)]
    captions = {"ss_tag_frequency": {"d": {"a photo of a red fox in the snow": 3, "a red fox sleeping on a rock": 1}}}
    words = dict(training_tags(captions))
    assert words["red"] == 4 and words["fox"] == 4 and "a" not in words and "of" not in words
    assert resolution_buckets({"ss_bucket_info": "not json"}) == []
    assert dataset_size({"ss_num_train_images": "17"}) == 17


def test_block_strength_matches_the_deltas(env):
    webui, page, client, model, deltas = env
    index = webui.services["lora"].index
    expected: dict[str, float] = {}
    for name, delta in deltas.items():
        label = block_label(index.layers[name], BlockLayout.of_model(model))
        expected[label] = expected.get(label, 0.0) + float(delta.norm()) ** 2
    engine = webui.services["lora"]
    entry = page.entry(str(webui.paths.lora_dir / "strong.safetensors"))
    result = compute_block_strength(engine, engine.network(entry))
    assert "TE" in result.blocks and "M00" in result.blocks
    assert any(label.startswith("IN") for label in result.blocks) and any(k.startswith("OUT") for k in result.blocks)
    for label, (norm, layers) in result.blocks.items():
        assert norm == pytest.approx(math.sqrt(expected.get(label, 0.0)), rel=1e-4), label
        assert (layers > 0) == (label in expected)
    chart = render_block_strength(result)
    assert chart.count("lora-block-row") == len(result.blocks) and "width:100.0%" in chart
    html_body = client.get("/lora-ui/blocks", params={"key": entry.filename}).json()["html"]
    assert html_body == chart
    other = client.get("/lora-ui/blocks", params={"key": str(webui.paths.lora_dir / "covered.safetensors")})
    assert "Not available" in other.json()["html"]  # an SDXL file on the SD1 model: a message, no error


def test_editor_and_save_write_the_sidecar(env):
    webui, page, client, _, _ = env
    key = str(webui.paths.lora_dir / "strong.safetensors")
    editor = client.get("/lora-ui/editor", params={"key": key}).json()
    assert editor["fields"]["description"] == XSS and editor["fields"]["preferred weight"] == 0.7
    assert editor["tags"][0] == ["red hair", 25]
    assert "&lt;script&gt;" in editor["info_html"] and "<script>" not in editor["info_html"]
    before = page.version()
    response = client.post("/lora-ui/save", json={"key": key, "fields": {
        "description": "näive ✓", "activation text": "red hair, smile", "preferred weight": 1.25,
        "negative text": "blurry", "notes": "n", "sd version": "SD1"}})
    assert response.status_code == 200
    card = response.json()["card"]
    assert card["description"] == "näive ✓" and card["weight"] == 1.25 and card["negative"] == "blurry"
    sidecar = webui.paths.lora_dir / "strong.json"
    data = json.loads(sidecar.read_text(encoding="utf-8"))
    assert data["tool"] == {"kept": True} and data["activation text"] == "red hair, smile"
    assert "näive ✓" in sidecar.read_text(encoding="utf-8")
    assert page.version() != before
    assert cards_by_name(client)["strong"]["description"] == "näive ✓"
    bad = client.post("/lora-ui/save", json={"key": key, "fields": {"preferred weight": "heavy"}})
    assert bad.status_code == 422 and "preferred weight" in bad.json()["detail"]
    assert client.post("/lora-ui/save", json={"key": key, "fields": {"owner": "x"}}).status_code == 422


def test_edits_through_the_api_helper_reach_the_cards(env):
    webui, page, client, _, _ = env
    entry = page.entry(str(webui.paths.lora_dir / "sub" / "texty.safetensors"))
    save_user_metadata(entry, {"activation text": "via api"})
    assert cards_by_name(client)["texty"]["activation"] == "via api"
    assert cards_by_name(client)["texty"]["description"] == "from the txt file"


def test_replace_preview_writes_the_image_the_page_sends(env):
    webui, _, client, _, _ = env
    key = str(webui.paths.lora_dir / "strong.safetensors")
    chosen = png_bytes((0, 200, 0))
    data_url = "data:image/png;base64," + base64.b64encode(chosen).decode()
    response = client.post("/lora-ui/replace-preview", json={"key": key, "image": data_url})
    assert response.status_code == 200
    assert (webui.paths.lora_dir / "strong.png").read_bytes() == chosen  # a PNG is kept byte for byte
    card = response.json()["card"]
    assert client.get(card["preview"]).content == chosen
    assert client.get("/lora-ui/editor", params={"key": key}).json()["preview"] == card["preview"]
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 12), (0, 0, 250)).save(jpeg, format="JPEG")
    converted = client.post("/lora-ui/replace-preview", json={"key": key, "image": base64.b64encode(
        jpeg.getvalue()).decode()})
    assert converted.status_code == 200
    with Image.open(webui.paths.lora_dir / "strong.png") as written:
        assert written.format == "PNG" and written.size == (8, 12)
    for bad, detail in (({"key": key}, "select an image"), ({"key": key, "image": "%%%"}, "not base64"),
                        ({"key": key, "image": base64.b64encode(b"not an image").decode()}, "not an image")):
        answer = client.post("/lora-ui/replace-preview", json=bad)
        assert answer.status_code == 422 and detail in answer.json()["detail"], answer.json()
    assert (webui.paths.lora_dir / "strong.png").stat().st_size > 0  # a refused image leaves the preview alone


def test_rescan_notices_new_files_and_state_reports_the_model(env):
    webui, page, client, _, _ = env
    state = client.get("/lora-ui/state").json()
    assert state["model_family"] == "SD1" and state["default_multiplier"] == 1.0
    tiny_lora(webui.paths.lora_dir / "sub" / "later.safetensors")
    page.refresh()
    new_state = client.get("/lora-ui/state").json()
    assert new_state["version"] != state["version"]
    assert "later" in cards_by_name(client)


def test_a_symlinked_lora_folder_keeps_its_companions_and_outside_links_stay_refused(env, tmp_path):
    """`models/Lora/shared -> /mnt/loras`: previews, `.txt` descriptions and sidecars beside the LoRA's real file show
    on the cards, in the editor, and can be saved; a companion symlinked from there to another folder is refused."""
    webui, page, client, _, _ = env
    lora_dir = webui.paths.lora_dir
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.txt").write_text("TOP-SECRET text")
    (private / "secret.json").write_text(json.dumps({"description": "TOP-SECRET", "activation text": "TOP-SECRET"}))
    (private / "secret.png").write_bytes(png_bytes((255, 0, 0)))
    store = tmp_path / "mnt-loras"
    tiny_lora(store / "shared_txt.safetensors")
    (store / "shared_txt.txt").write_text("described in the shared folder", encoding="utf-8")
    (store / "shared_txt.png").write_bytes(png_bytes((0, 90, 0)))
    tiny_lora(store / "shared_json.safetensors")
    (store / "shared_json.json").write_text(json.dumps({"description": "shared sidecar", "activation text": "blue"}))
    tiny_lora(store / "escape.safetensors")
    (store / "escape.txt").symlink_to(private / "secret.txt")
    (store / "escape.json").symlink_to(private / "secret.json")
    (store / "escape.png").symlink_to(private / "secret.png")
    (lora_dir / "shared").symlink_to(store, target_is_directory=True)
    try:
        page.refresh()
        response = client.get("/lora-ui/cards")
        cards = {card["name"]: card for card in response.json()["cards"]}
        assert "TOP-SECRET" not in response.text
        assert cards["shared_txt"]["description"] == "described in the shared folder"
        assert client.get(cards["shared_txt"]["preview"]).content == png_bytes((0, 90, 0))
        assert cards["shared_json"]["description"] == "shared sidecar" and cards["shared_json"]["activation"] == "blue"
        key = str(lora_dir / "shared" / "shared_json.safetensors")
        assert client.get("/lora-ui/editor", params={"key": key}).json()["fields"]["description"] == "shared sidecar"
        saved = client.post("/lora-ui/save", json={"key": key, "fields": {"notes": "kept in the real folder"}})
        assert saved.status_code == 200 and saved.json()["card"]["description"] == "shared sidecar"
        assert json.loads((store / "shared_json.json").read_text())["notes"] == "kept in the real folder"
        txt_key = str(lora_dir / "shared" / "shared_txt.safetensors")  # no sidecar yet: created beside the file
        assert client.post("/lora-ui/save", json={"key": txt_key, "fields": {"notes": "new"}}).status_code == 200
        assert json.loads((store / "shared_txt.json").read_text()) == {"notes": "new"}

        escape = cards["escape"]
        assert escape["description"] == "" and escape["activation"] == ""  # neither the .txt nor the sidecar is read
        assert escape["preview"] == ""  # no thumbnail URL for a refused preview (rather than a broken image)
        escape_key = str(lora_dir / "shared" / "escape.safetensors")
        assert client.get("/lora-ui/editor", params={"key": escape_key}).json()["fields"]["description"] == ""
        thumb = client.get("/lora-ui/thumb", params={"key": escape_key})
        assert thumb.status_code == 403 and "outside the Lora folders" in thumb.json()["detail"]
        refused = client.post("/lora-ui/save", json={"key": escape_key, "fields": {"notes": "through the link"}})
        assert refused.status_code == 403 and "outside the Lora folders" in refused.json()["detail"]
        assert json.loads((private / "secret.json").read_text())["description"] == "TOP-SECRET"
        assert (store / "escape.json").is_symlink()
        errors = {item["file"]: item["reason"] for item in response.json()["errors"]}
        assert "sidecar ignored" in errors[str(lora_dir / "shared" / "escape.json")]
    finally:
        (lora_dir / "shared").unlink()
        page.refresh()
