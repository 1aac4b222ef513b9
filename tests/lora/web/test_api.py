"""The Lora extension's HTTP API over real HTTP (uvicorn on 127.0.0.1), as clients see it.

One server for the module: a fresh data folder (embedded tiny SD1 checkpoint and the 10 demo LoRAs, as on a fresh
machine), `--api-auth` on, API only, a 1 MiB body limit (the host's default is 50 MiB; the middleware is the same).
The A1111-client test uses plain `requests` with A1111's JSON shapes; the others use httpx. Every file is real: the
LoRAs are loaded against the real tiny model, previews are real PNGs, traversal tricks use real symlinks.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import threading
from pathlib import Path

import httpx
import pytest
import requests
import torch
from PIL import Image, PngImagePlugin
from safetensors.torch import load_file, save_file

from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.hashes import payload_hash

AUTH = ("lora-user", "pa:ss word")
MAX_BODY = 1024 * 1024
TINY = {"width": 64, "height": 64, "steps": 2, "seed": 7, "sampler_name": "Euler"}
LORA_ROUTES = [("GET", "/sdapi/v1/loras"), ("POST", "/sdapi/v1/refresh-loras"), ("GET", "/sdapi/v1/loaded-loras"),
               ("GET", "/sdapi/v1/lora?name=demo_lora"), ("POST", "/sdapi/v1/lora/metadata"),
               ("GET", "/sdapi/v1/lora/preview?name=demo_lora"), ("GET", "/sdapi/v1/lora/thumb?name=demo_lora")]
TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "..\\..\\Windows\\win.ini", "sub/../../demo_lora",
              "C:\\Windows\\win.ini", "demo_lora/../../../etc/passwd", "..", "a\x00b"]


class StepGate:
    """A `process_step` callback that, when armed, holds the generation at its first step until released."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, p, step, total) -> None:
        if self.armed and step == 0 and not self.reached.is_set():
            self.reached.set()
            self.release.wait(60)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, webui, app, gate): a fresh data folder served on 127.0.0.1 with auth and a 1 MiB body limit."""
    data = tmp_path_factory.mktemp("lora-api")
    webui = WebUI.create(["--data-dir", str(data), "--api-auth", f"{AUTH[0]}:{AUTH[1]}", "--nowebui"])
    load_startup_model(webui)
    gate = StepGate()
    webui.callbacks.add("process_step", gate)
    app = create_app(webui, ui=False, max_body_bytes=MAX_BODY)
    thread = ServerThread(app, host="127.0.0.1", port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui, app, gate
    finally:
        gate.release.set()
        thread.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], auth=AUTH, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def lora_dir(server) -> Path:
    return server[1].paths.lora_dir


def png_with_parameters(text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def error_of(response: httpx.Response, status: int) -> str:
    """The A1111-shaped error's `detail` after checking the status code."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) >= {"error", "detail"}
    return body["detail"]


# ------------------------------------------------------------------------------------ A1111 client


def test_a1111_client_lists_refreshes_and_generates_with_a_lora_tag(server, lora_dir):
    """What a client written for A1111's API does, with plain `requests` and A1111's JSON shapes."""
    base = server[0]
    session = requests.Session()
    session.auth = AUTH
    loras = session.get(f"{base}/sdapi/v1/loras", timeout=60).json()
    by_name = {item["name"]: item for item in loras}
    assert {f"demo_{k}" for k in ("lora", "locon", "loha", "lokr", "ia3", "full", "norm", "glora", "oft", "dora")} \
        <= set(by_name)
    demo = by_name["demo_lora"]
    assert set(demo) == {"name", "alias", "path", "metadata"}
    assert demo["alias"] == "demo-lora"  # ss_output_name
    assert Path(demo["path"]) == lora_dir / "demo_lora.safetensors"
    assert demo["metadata"]["ss_network_dim"] == "4"
    assert demo["metadata"]["ss_tag_frequency"]["10_demo"]["sunset style"] == 40  # JSON values decoded, as A1111

    refreshed = session.post(f"{base}/sdapi/v1/refresh-loras", timeout=60)
    assert refreshed.status_code == 200 and refreshed.json() is None

    body = {"prompt": "a lighthouse <lora:demo_lora:0.8>", "negative_prompt": "", **TINY}
    response = session.post(f"{base}/sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text[:500]
    result = response.json()
    info = json.loads(result["info"])
    short = payload_hash(lora_dir / "demo_lora.safetensors")[:12]
    assert info["extra_generation_params"]["Lora hashes"] == f"demo_lora: {short}"
    assert f'Lora hashes: "demo_lora: {short}"' in info["infotexts"][0]
    assert info["infotexts"][0].startswith("a lighthouse <lora:demo_lora:0.8>")
    image = Image.open(io.BytesIO(base64.b64decode(result["images"][0])))
    assert image.size == (64, 64)
    assert f'Lora hashes: "demo_lora: {short}"' in image.info["parameters"]


def test_lora_changes_the_image_and_loaded_loras_shows_multipliers(client, lora_dir):
    plain = client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse", **TINY}).json()
    assert client.get("/sdapi/v1/loaded-loras").json() == []
    prompt = "a lighthouse <lora:demo_lora:0.8> <lora:demo-loha:0.5:0.25>"
    styled = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, **TINY}).json()
    assert styled["images"][0] != plain["images"][0]
    loaded = client.get("/sdapi/v1/loaded-loras").json()
    assert [(x["name"], x["te_multiplier"], x["unet_multiplier"]) for x in loaded] == \
        [("demo_lora", 0.8, 0.8), ("demo-loha", 0.5, 0.25)]
    assert loaded[1]["path"] == str(lora_dir / "demo_loha.safetensors")
    assert loaded[1]["hash"] == payload_hash(lora_dir / "demo_loha.safetensors")[:12]
    assert all(x["layers"] > 0 and x["block_weights"] is False for x in loaded)
    hashes = json.loads(styled["info"])["extra_generation_params"]["Lora hashes"]
    assert hashes.split(", ")[1].startswith("demo-loha: ")  # the name as written in the prompt


def test_hires_prompt_lora_is_applied_and_recorded(client):
    body = {"prompt": "a boat <lora:demo_lora:0.8>", "hr_prompt": "a boat <lora:demo_lokr:0.6>", "enable_hr": True,
            "hr_scale": 1.5, "hr_second_pass_steps": 2, "denoising_strength": 0.5, **TINY}
    result = client.post("/sdapi/v1/txt2img", json=body)
    assert result.status_code == 200, result.text[:500]
    info = json.loads(result.json()["info"])
    names = [part.split(":")[0] for part in info["extra_generation_params"]["Lora hashes"].split(", ")]
    assert names == ["demo_lora", "demo_lokr"]  # first pass, then the hires pass's own
    assert [x["name"] for x in client.get("/sdapi/v1/loaded-loras").json()] == ["demo_lokr"]


# ------------------------------------------------------------------------------------------- refresh


def test_refresh_shows_added_and_removed_files(client, lora_dir):
    sub = lora_dir / "added"
    sub.mkdir(exist_ok=True)
    new = sub / "fresh_one.safetensors"
    shutil.copyfile(lora_dir / "demo_lora.safetensors", new)
    try:
        assert "fresh_one" not in [x["name"] for x in client.get("/sdapi/v1/loras").json()]
        assert client.post("/sdapi/v1/refresh-loras").json() is None
        item = next(x for x in client.get("/sdapi/v1/loras").json() if x["name"] == "fresh_one")
        assert item["path"] == str(new) and item["alias"] == "demo-lora"
        details = client.get("/sdapi/v1/lora", params={"name": "added/fresh_one"}).json()
        assert details["path"] == str(new)
    finally:
        new.unlink()
    client.post("/sdapi/v1/refresh-loras")
    names = [x["name"] for x in client.get("/sdapi/v1/loras").json()]
    assert "fresh_one" not in names and "demo_lora" in names
    assert "Lora 'fresh_one' not found" in error_of(client.get("/sdapi/v1/lora", params={"name": "fresh_one"}), 404)


def test_refresh_while_a_generation_runs(server, client, lora_dir):
    """The generation is held at its first step (LoRAs already merged); refresh, list and add a file meanwhile."""
    _, _, _, gate = server
    result: dict = {}

    def generate() -> None:
        result["response"] = client.post("/sdapi/v1/txt2img",
                                          json={"prompt": "a tree <lora:demo_locon:0.7>", **TINY})

    gate.armed = True
    worker = threading.Thread(target=generate)
    worker.start()
    added = lora_dir / "during_generation.safetensors"
    try:
        assert gate.reached.wait(120), "generation did not start"
        assert client.get("/sdapi/v1/progress").json()["active"] is True
        shutil.copyfile(lora_dir / "demo_ia3.safetensors", added)
        assert client.post("/sdapi/v1/refresh-loras", timeout=20).status_code == 200  # does not wait for the job
        names = [x["name"] for x in client.get("/sdapi/v1/loras", timeout=20).json()]
        assert "during_generation" in names and "demo_locon" in names
        assert [x["name"] for x in client.get("/sdapi/v1/loaded-loras").json()] == ["demo_locon"]
        assert worker.is_alive()  # the refresh really happened during the generation
    finally:
        gate.release.set()
        worker.join(120)
        gate.armed = False
    response = result["response"]
    assert response.status_code == 200, response.text[:500]
    hashes = json.loads(response.json()["info"])["extra_generation_params"]["Lora hashes"]
    assert hashes == f"demo_locon: {payload_hash(lora_dir / 'demo_locon.safetensors')[:12]}"
    after = client.post("/sdapi/v1/txt2img", json={"prompt": "x <lora:during_generation:1>", **TINY}).json()
    assert "during_generation: " in json.loads(after["info"])["extra_generation_params"]["Lora hashes"]
    added.unlink()
    client.post("/sdapi/v1/refresh-loras")


# -------------------------------------------------------------------------------------------- details


def test_lora_details(client, lora_dir):
    details = client.get("/sdapi/v1/lora", params={"name": "demo_lora"}).json()
    assert details["name"] == "demo_lora" and details["alias"] == "demo-lora"
    assert details["algorithm"] == "LoRA" and details["rank"] == 4 and details["alpha"] == 4.0
    assert details["sd_version"] == "SD1" and details["effective_sd_version"] == "SD1"
    assert details["hash"] == payload_hash(lora_dir / "demo_lora.safetensors")
    assert details["shorthash"] == details["hash"][:12]
    assert details["user_metadata"]["activation text"] == "sunset style"
    assert details["metadata"]["modelspec.title"] == "Demo LoRA"
    layers = details["layers"]
    assert layers["matched"] > 0 and layers["unmatched"] == 0 and layers["algorithms"] == {"LoRA": layers["matched"]}
    assert details["load_error"] is None and details["model"]
    assert client.get(details["preview_url"]).content == (lora_dir / "demo_lora.png").read_bytes()
    assert client.get(details["thumb_url"]).headers["content-type"] == "image/png"
    # SD.Next's parameter name and the alias work too
    assert client.get("/sdapi/v1/lora", params={"lora": "demo_loha"}).json()["algorithm"] == "LoHa"
    assert client.get("/sdapi/v1/lora", params={"name": "demo-lokr"}).json()["name"] == "demo_lokr"
    assert "?name=" in error_of(client.get("/sdapi/v1/lora"), 422)
    assert "'nope' not found" in error_of(client.get("/sdapi/v1/lora", params={"name": "nope"}), 404)


def test_lora_details_report_unmatched_keys_and_wrong_architecture(client, lora_dir):
    tensors = load_file(lora_dir / "demo_lora.safetensors")
    tensors |= {"lora_unet_no_such_block_proj.lora_down.weight": torch.zeros(4, 8),
                "lora_unet_no_such_block_proj.lora_up.weight": torch.zeros(8, 4)}
    partial, sdxl = lora_dir / "partial.safetensors", lora_dir / "for_sdxl.safetensors"
    save_file(tensors, partial, metadata={"ss_odd": '{"x": NaN, "y": -Infinity}'})  # JSON has no NaN: no 500
    save_file(tensors, sdxl, metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    try:
        client.post("/sdapi/v1/refresh-loras")
        details = client.get("/sdapi/v1/lora", params={"name": "partial"}).json()
        assert details["layers"]["unmatched"] == 1
        assert details["layers"]["unmatched_examples"] == ["lora_unet_no_such_block_proj"]
        assert any("1 keys matched no layer" in line for line in details["problems"])
        assert details["preview_url"] is None and details["rank"] == 4
        # NaN/Infinity are not JSON: the field is kept as the text the file holds (modules.safe_json)
        assert details["metadata"]["ss_odd"] == '{"x": NaN, "y": -Infinity}'
        assert next(x for x in client.get("/sdapi/v1/loras").json() if x["name"] == "partial")["metadata"] == \
            {"ss_odd": '{"x": NaN, "y": -Infinity}'}
        other = client.get("/sdapi/v1/lora", params={"name": "for_sdxl"}).json()
        assert other["sd_version"] == "SDXL" and other["layers"] is None
        assert "SDXL" in other["load_error"] and "SD1" in other["load_error"]
    finally:
        partial.unlink()
        sdxl.unlink()
        client.post("/sdapi/v1/refresh-loras")


# ------------------------------------------------------------------------------------------- metadata


def test_metadata_edit_writes_the_sidecar(client, lora_dir):
    sidecar = lora_dir / "demo_glora.json"
    before = json.loads(sidecar.read_text())
    data = json.loads(sidecar.read_text()) | {"civitai": {"id": 5}}  # another tool's key: must be kept
    sidecar.write_text(json.dumps(data))
    response = client.post("/sdapi/v1/lora/metadata", json={
        "name": "demo_glora", "activation text": "glora tex, shiny", "preferred weight": 0.65, "sd version": "SD1"})
    assert response.status_code == 200, response.text
    on_disk = json.loads(sidecar.read_text())
    assert on_disk["activation text"] == "glora tex, shiny" and on_disk["preferred weight"] == 0.65
    assert on_disk["civitai"] == {"id": 5} and on_disk["description"] == before["description"]
    assert response.json() == {"name": "demo_glora", "path": str(sidecar), "user_metadata": on_disk}
    # `changes` dict and the underscore spellings
    client.post("/sdapi/v1/lora/metadata", json={"name": "demo-glora", "changes": {"notes": "from the API"},
                                                 "negative_text": "noisy", "sd_version": "Unknown"})
    details = client.get("/sdapi/v1/lora", params={"name": "demo_glora"}).json()
    assert details["user_metadata"]["notes"] == "from the API"
    assert details["user_metadata"]["negative text"] == "noisy"
    assert details["sd_version"] == "SD1" and details["effective_sd_version"] == "Unknown"  # the user's choice
    client.post("/sdapi/v1/lora/metadata", json={"name": "demo_glora", "sd version": "SDXL"})
    assert client.get("/sdapi/v1/lora", params={"name": "demo_glora"}).json()["effective_sd_version"] == "SDXL"
    client.post("/sdapi/v1/lora/metadata", json={"name": "demo_glora", "sd version": "SD1"})


def test_metadata_edit_rejects_bad_values_with_messages(client, lora_dir):
    sidecar = lora_dir / "demo_oft.json"
    before = sidecar.read_bytes()
    url = "/sdapi/v1/lora/metadata"
    assert "preferred weight" in error_of(client.post(url, json={"name": "demo_oft", "preferred weight": "abc"}), 422)
    assert "sd version" in error_of(client.post(url, json={"name": "demo_oft", "sd version": "SD9"}), 422)
    assert "unknown field 'rating'" in error_of(client.post(url, json={"name": "demo_oft",
                                                                        "changes": {"rating": 5}}), 422)
    assert "preferred weight must be finite" in error_of(
        client.post(url, json={"name": "demo_oft", "changes": {"preferred weight": "inf"}}), 422)
    assert "notes" in error_of(client.post(url, json={"name": "demo_oft", "changes": {"notes": 12}}), 422)
    assert "colour" in error_of(client.post(url, json={"name": "demo_oft", "colour": "red"}), 422)
    assert error_of(client.post(url, json={"description": "no name"}), 422)
    assert error_of(client.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert "'missing' not found" in error_of(client.post(url, json={"name": "missing", "notes": "x"}), 404)
    assert sidecar.read_bytes() == before  # nothing was written


def test_oversized_bodies_are_refused_with_413(client, lora_dir):
    before = (lora_dir / "demo_norm.json").read_bytes()
    big = {"name": "demo_norm", "notes": "x" * (MAX_BODY + 10)}
    assert client.post("/sdapi/v1/lora/metadata", json=big).status_code == 413

    def chunked():  # no Content-Length: counted while streaming
        yield b'{"name": "demo_norm", "notes": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    streamed = client.post("/sdapi/v1/lora/metadata", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["error"] == "RequestTooLarge"
    long_notes = {"name": "demo_norm", "notes": "z" * 100_001}  # under the body limit, over the field limit
    assert error_of(client.post("/sdapi/v1/lora/metadata", json=long_notes), 422)
    assert (lora_dir / "demo_norm.json").read_bytes() == before


# ------------------------------------------------------------------------------------ preview / thumb


def test_preview_and_cached_thumbnail(server, client, lora_dir):
    app = server[2]
    preview = client.get("/sdapi/v1/lora/preview", params={"name": "demo_ia3"})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert preview.content == (lora_dir / "demo_ia3.png").read_bytes()
    unchanged = client.get("/sdapi/v1/lora/preview", params={"name": "demo_ia3"},
                           headers={"If-None-Match": preview.headers["etag"]})
    assert unchanged.status_code == 304 and unchanged.content == b""
    thumb = client.get("/sdapi/v1/lora/thumb", params={"name": "demo_ia3", "size": 48})
    image = Image.open(io.BytesIO(thumb.content))
    assert image.format == "PNG" and image.size == (48, 48)
    assert Image.open(io.BytesIO(client.get("/sdapi/v1/lora/thumb", params={"name": "demo-ia3"}).content)).size \
        == (128, 128)
    cached = len(app.state.lora_api.thumbs)
    again = client.get("/sdapi/v1/lora/thumb", params={"name": "demo_ia3", "size": 48})
    assert again.content == thumb.content and len(app.state.lora_api.thumbs) == cached
    assert client.get("/sdapi/v1/lora/thumb", params={"name": "demo_ia3", "size": 48},
                      headers={"If-None-Match": thumb.headers["etag"]}).status_code == 304
    # a new preview (other size, new mtime) gives a new thumbnail
    target = lora_dir / "demo_ia3.png"
    original = target.read_bytes()
    try:
        Image.new("RGB", (200, 100), (0, 200, 0)).save(target)
        os.utime(target, ns=(os.stat(target).st_atime_ns, os.stat(target).st_mtime_ns + 10**9))
        fresh = Image.open(io.BytesIO(client.get("/sdapi/v1/lora/thumb",
                                                 params={"name": "demo_ia3", "size": 48}).content))
        assert fresh.size == (48, 24) and fresh.getpixel((10, 10))[:3] == (0, 200, 0)
        target.write_bytes(b"not an image at all")
        assert "not a readable image" in error_of(client.get("/sdapi/v1/lora/thumb",
                                                             params={"name": "demo_ia3", "size": 40}), 422)
    finally:
        target.write_bytes(original)
    assert error_of(client.get("/sdapi/v1/lora/thumb", params={"name": "demo_ia3", "size": 5000}), 422)
    assert error_of(client.get("/sdapi/v1/lora/thumb", params={"name": "demo_ia3", "size": "big"}), 422)
    (lora_dir / "no_preview.safetensors").write_bytes((lora_dir / "demo_lora.safetensors").read_bytes())
    try:
        client.post("/sdapi/v1/refresh-loras")
        assert "no preview" in error_of(client.get("/sdapi/v1/lora/preview", params={"name": "no_preview"}), 404)
        assert "no preview" in error_of(client.get("/sdapi/v1/lora/thumb", params={"name": "no_preview"}), 404)
    finally:
        (lora_dir / "no_preview.safetensors").unlink()
        client.post("/sdapi/v1/refresh-loras")


# --------------------------------------------------------------------------------------------- safety


@pytest.mark.parametrize("name", TRAVERSALS)
def test_paths_as_names_are_refused(client, name):
    for method, path in (("GET", "/sdapi/v1/lora/preview"), ("GET", "/sdapi/v1/lora/thumb"), ("GET", "/sdapi/v1/lora")):
        response = client.request(method, path, params={"name": name})
        assert response.status_code == 400, (path, name, response.status_code)
        assert "is a path" in response.json()["detail"]
        assert "root:" not in response.text
    response = client.post("/sdapi/v1/lora/metadata", json={"name": name, "notes": "pwned"})
    assert response.status_code == 400 and "is a path" in response.json()["detail"]


def test_symlinks_pointing_outside_the_lora_folders_are_refused(client, lora_dir, tmp_path):
    """A preview or sidecar symlinked to a place outside the Lora folders and not beside the LoRA's real file is
    neither served, shown nor written, also inside a symlinked Lora folder (a link from there to a third folder)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret_png = outside / "secret.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(secret_png)
    secret_json = outside / "secret.json"
    secret_json.write_text(json.dumps({"description": "TOP-SECRET"}))
    shutil.copyfile(lora_dir / "demo_lora.safetensors", lora_dir / "evil.safetensors")
    (lora_dir / "evil.png").symlink_to(secret_png)
    (lora_dir / "evil.json").symlink_to(secret_json)
    store = tmp_path / "store"  # a symlinked Lora folder whose own companions link to a third folder
    store.mkdir()
    shutil.copyfile(lora_dir / "demo_lora.safetensors", store / "escape.safetensors")
    (store / "escape.png").symlink_to(secret_png)
    (store / "escape.json").symlink_to(secret_json)
    (lora_dir / "linked_store").symlink_to(store, target_is_directory=True)
    try:
        client.post("/sdapi/v1/refresh-loras")
        for name in ("evil", "linked_store/escape"):
            assert "outside the Lora folders" in error_of(client.get("/sdapi/v1/lora/preview",
                                                                     params={"name": name}), 403)
            assert "outside the Lora folders" in error_of(client.get("/sdapi/v1/lora/thumb",
                                                                     params={"name": name}), 403)
            details = client.get("/sdapi/v1/lora", params={"name": name})
            assert details.status_code == 200 and "TOP-SECRET" not in details.text
            assert details.json()["preview_url"] is None and details.json()["user_metadata"] == {}
            assert "sidecar ignored" in " ".join(details.json()["problems"])
            refused = client.post("/sdapi/v1/lora/metadata", json={"name": name, "notes": "overwrite"})
            assert "outside the Lora folders" in error_of(refused, 403)
            assert "outside the Lora folders" in error_of(client.post("/sdapi/v1/lora/metadata",
                                                                      json={"name": name}), 403)  # read-only call
        assert json.loads(secret_json.read_text()) == {"description": "TOP-SECRET"}
        assert (lora_dir / "evil.json").is_symlink() and (store / "escape.json").is_symlink()
    finally:
        for link in ("evil.png", "evil.json", "linked_store", "evil.safetensors"):
            (lora_dir / link).unlink()
        client.post("/sdapi/v1/refresh-loras")


def test_a_symlinked_lora_folder_keeps_its_preview_and_sidecar(client, lora_dir, tmp_path):
    """`models/Lora/shared -> /mnt/loras`: the preview and sidecar beside the LoRA's real file are served, shown and
    editable (the companion rule allows the LoRA file's real folder), and edits land in the real sidecar."""
    store = tmp_path / "mnt-loras"
    store.mkdir()
    shutil.copyfile(lora_dir / "demo_lora.safetensors", store / "shared_style.safetensors")
    Image.new("RGB", (64, 32), (0, 128, 255)).save(store / "shared_style.png")
    (store / "shared_style.json").write_text(json.dumps({"description": "from the shared folder", "tool": 1}))
    (lora_dir / "shared").symlink_to(store, target_is_directory=True)
    name = "shared/shared_style"
    try:
        client.post("/sdapi/v1/refresh-loras")
        details = client.get("/sdapi/v1/lora", params={"name": name})
        assert details.status_code == 200, details.text[:300]
        body = details.json()
        assert body["user_metadata"] == {"description": "from the shared folder", "tool": 1}
        assert not [p for p in body["problems"] if "sidecar" in p]
        preview = client.get(body["preview_url"])
        assert preview.status_code == 200 and preview.content == (store / "shared_style.png").read_bytes()
        thumb = client.get(body["thumb_url"] + "&size=32")
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (32, 16)
        edited = client.post("/sdapi/v1/lora/metadata", json={"name": name, "notes": "edited through the link"})
        assert edited.status_code == 200, edited.text[:300]
        assert json.loads((store / "shared_style.json").read_text()) == {
            "description": "from the shared folder", "tool": 1, "notes": "edited through the link"}
        assert client.get("/sdapi/v1/lora", params={"name": name}).json()["user_metadata"]["notes"] == \
            "edited through the link"
    finally:
        (lora_dir / "shared").unlink()
        client.post("/sdapi/v1/refresh-loras")


def test_every_lora_route_needs_the_api_credentials(server):
    base = server[0]
    with httpx.Client(base_url=base, timeout=30) as anonymous:
        for method, path in LORA_ROUTES:
            for auth in (None, ("lora-user", "wrong"), ("someone", AUTH[1])):
                response = anonymous.request(method, path, auth=auth, json={"name": "demo_lora", "notes": "x"})
                assert response.status_code == 401, (method, path, auth)
                assert response.json()["error"] == "Unauthorized"
        for method, path in LORA_ROUTES:
            response = anonymous.request(method, path, auth=AUTH, json={"name": "demo_lora"})
            assert response.status_code == 200, (method, path, response.text[:200])


# ----------------------------------------------------------------------------------- infotext paste


def test_png_info_rewrites_lora_names_by_hash(client, lora_dir):
    short = payload_hash(lora_dir / "demo_lora.safetensors")[:12]
    text = ("a cat <lora:someone_elses_name:0.7> <lora:unknown_net:0.5>\nNegative prompt: ugly\n"
            f'Steps: 2, Sampler: Euler, Seed: 1, Size: 64x64, Lora hashes: "someone_elses_name: {short}, '
            'unknown_net: 0123456789ab"')
    response = client.post("/sdapi/v1/png-info", json={"image": png_with_parameters(text)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == text
    assert body["parameters"]["Prompt"] == "a cat <lora:demo-lora:0.7> <lora:unknown_net:0.5>"
    # the rewritten prompt generates with the local file
    again = client.post("/sdapi/v1/txt2img", json={"prompt": body["parameters"]["Prompt"], **TINY})
    hashes = json.loads(again.json()["info"])["extra_generation_params"]["Lora hashes"]
    assert hashes == f"demo-lora: {short}"


# ----------------------------------------------------------------------------------------- openapi


def test_openapi_describes_every_lora_route(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for method, path in LORA_ROUTES:
        operation = paths[path.split("?")[0]][method.lower()]
        assert operation["summary"] and "401" in operation["responses"] and "422" in operation["responses"]
        assert "200" in operation["responses"] and operation["responses"]["200"]["content"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["LoraItem"]["properties"]) == {"name", "alias", "path", "metadata"}
    assert {"sd version", "activation text", "preferred weight", "negative text", "notes", "changes"} <= \
        set(schemas["LoraMetadataRequest"]["properties"])
    thumb_params = {p["name"]: p for p in paths["/sdapi/v1/lora/thumb"]["get"]["parameters"]}
    assert thumb_params["size"]["schema"]["maximum"] == 512
    assert "image/png" in paths["/sdapi/v1/lora/thumb"]["get"]["responses"]["200"]["content"]
    assert "404" in paths["/sdapi/v1/lora/preview"]["get"]["responses"]
