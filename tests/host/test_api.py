"""The `/sdapi/v1` API over real HTTP: uvicorn on 127.0.0.1 (a free port) serving `create_app(webui)`.

One server for the module (API only, `--api-auth` on, tiny SD1 checkpoints written by the test). Every
test asserts what a client sees: status codes, A1111 field names, PNG infotext, error messages.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modules.host import WebUI
from modules.tiny_models import write_single_file
from modules.webui_server import ServerThread, create_app

USERS = "alice:s3cret,bob:pa:ss"  # a password may contain ':'
AUTH = ("alice", "s3cret")
SIZE = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base_url, webui): the API-only app on 127.0.0.1, auth on, two good checkpoints and a corrupt one."""
    data = tmp_path_factory.mktemp("api")
    ckpt_dir = data / "models" / "Stable-diffusion"
    write_single_file(ckpt_dir / "tiny-a.safetensors", "SD1", seed=1)
    write_single_file(ckpt_dir / "tiny-b.safetensors", "SD1", seed=2)
    (ckpt_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + b"x" * 64)
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--api-auth", USERS, "--nowebui"])
    webui.models.load("tiny-a.safetensors")

    def extension_routes(webui_, app):  # what an extension does in its app_started callback
        app.add_api_route("/sdapi/v1/ext-ping", lambda: {"pong": True}, methods=["GET"])

    webui.callbacks.add("app_started", extension_routes)
    app = create_app(webui)
    thread = ServerThread(app, host="127.0.0.1", port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], auth=AUTH, timeout=120) as c:
        yield c


def _png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


def txt2img(client: httpx.Client, **body) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, **body})
    assert response.status_code == 200, response.text
    return response.json()


# ------------------------------------------------------------------------------------------------ auth


def test_every_sdapi_route_requires_basic_auth(server, client):
    base, _ = server
    spec = client.get("/openapi.json").json()
    routes = [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops
              if path.startswith("/sdapi/")]
    assert {"/sdapi/v1/txt2img", "/sdapi/v1/options", "/sdapi/v1/png-info"} <= {path for _, path in routes}
    routes.append(("GET", "/sdapi/v1/ext-ping"))  # added by an "extension" after the app was built
    with httpx.Client(base_url=base, timeout=30) as anonymous:
        for method, path in routes:
            for auth in (None, ("alice", "wrong"), ("mallory", "s3cret"), ("alice", "")):
                response = anonymous.request(method, path, auth=auth, json={})
                assert response.status_code == 401, (method, path, auth, response.status_code)
                assert response.headers["www-authenticate"].startswith("Basic")
                assert response.json()["error"] == "Unauthorized"
        garbage = anonymous.get("/sdapi/v1/progress", headers={"Authorization": "Basic !!!notbase64"})
        assert garbage.status_code == 401
        assert anonymous.get("/sdapi/v1/ext-ping", auth=("bob", "pa:ss")).json() == {"pong": True}
        assert anonymous.get("/sdapi/v1/sd-models", auth=AUTH).status_code == 200
        assert anonymous.get("/openapi.json").status_code == 200  # only /sdapi/ is protected


# ------------------------------------------------------------------------------------------ read-only


def test_sd_models_lists_checkpoints_with_a1111_fields(server, client):
    _, webui = server
    items = client.get("/sdapi/v1/sd-models").json()
    by_name = {item["model_name"]: item for item in items}
    assert set(by_name) == {"broken", "tiny-a", "tiny-b"}
    tiny_a = by_name["tiny-a"]
    assert set(tiny_a) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    expected = hashlib.sha256(Path(tiny_a["filename"]).read_bytes()).hexdigest()
    assert tiny_a["sha256"] == expected  # hashed when it was loaded
    assert tiny_a["hash"] == expected[:10]
    assert tiny_a["title"] == f"tiny-a.safetensors [{expected[:10]}]"
    assert Path(tiny_a["filename"]).parent == webui.paths.ckpt_dir


def test_samplers_schedulers_cmd_flags(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    names = [s["name"] for s in samplers]
    assert {"Euler", "Euler a", "DPM++ 2M", "DDIM"} <= set(names)
    assert "k_euler_a" in next(s for s in samplers if s["name"] == "Euler a")["aliases"]
    labels = [s["label"] for s in client.get("/sdapi/v1/schedulers").json()]
    assert "Karras" in labels
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["nowebui"] is True and flags["port"] == 7860
    assert flags["api_auth"] == "<redacted>" and "s3cret" not in str(flags)  # credentials are never sent back


def test_compatibility_routes_for_a1111_clients(server, client):
    _, webui = server
    upscalers = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert "Lanczos" in upscalers and "Nearest" in upscalers
    assert "Latent" in [m["name"] for m in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert client.get("/sdapi/v1/sd-vae").json() == []
    listed = client.get("/sdapi/v1/scripts").json()  # tests/host/test_scripts_api.py tests the scripts themselves
    assert "x/y/z plot" in listed["txt2img"] and "sd upscale" in listed["img2img"]
    assert "sd upscale" not in listed["txt2img"]
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    loaded = webui.models.current.checkpoint.name
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200 and webui.models.current is None
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200
    assert webui.models.current.checkpoint.name == loaded  # the sd_model_checkpoint option's model


def test_progress_when_idle(client):
    body = client.get("/sdapi/v1/progress").json()
    assert body["progress"] == 0 and body["eta_relative"] == 0 and body["current_image"] is None
    assert set(body["state"]) >= {"skipped", "interrupted", "job", "job_count", "job_no", "sampling_step",
                                  "sampling_steps", "job_timestamp"}


def test_refresh_checkpoints_finds_new_file(server, client):
    _, webui = server
    extra = webui.paths.ckpt_dir / "sub" / "tiny-c.safetensors"
    extra.parent.mkdir(exist_ok=True)
    extra.write_bytes((webui.paths.ckpt_dir / "tiny-b.safetensors").read_bytes())
    try:
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert "sub_tiny-c" in names
    finally:
        extra.unlink()
        client.post("/sdapi/v1/refresh-checkpoints")


# -------------------------------------------------------------------------------------------- options


def test_options_set_validates_every_key_first(server, client):
    _, webui = server
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    assert json.loads(webui.paths.config_file.read_text())["CLIP_stop_at_last_layers"] == 2

    too_big = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3, "eta_ancestral": 5})
    assert too_big.status_code == 422 and "eta_ancestral" in too_big.json()["detail"]
    bad_choice = client.post("/sdapi/v1/options", json={"samples_format": "gif"})
    assert bad_choice.status_code == 422 and "samples_format" in bad_choice.json()["detail"]
    assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2  # nothing applied
    assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}).status_code == 200


def test_options_switch_checkpoint_and_corrupt_one_keeps_model(server, client):
    _, webui = server
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"}).status_code == 200
    assert webui.models.current.checkpoint.name == "tiny-b.safetensors"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-b.safetensors [")

    broken = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "broken.safetensors"})
    assert 400 <= broken.status_code < 500
    assert "broken.safetensors" in broken.json()["detail"]
    missing = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "does-not-exist"})
    assert missing.status_code == 422 and "does-not-exist" in missing.json()["detail"]
    assert webui.models.current.checkpoint.name == "tiny-b.safetensors"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-b.safetensors [")
    result = txt2img(client, prompt="still works", seed=5)  # the server keeps generating with the old model
    assert len(result["images"]) == 1

    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-a.safetensors"}).status_code == 200
    assert webui.models.current.checkpoint.name == "tiny-a.safetensors"


# -------------------------------------------------------------------------------------------- txt2img


def test_txt2img_returns_png_with_infotext(client):
    body = txt2img(client, prompt="a red cube", negative_prompt="blurry", seed=123, sampler_name="Euler",
                   batch_size=2)
    assert len(body["images"]) == 2
    info = json.loads(body["info"])
    assert info["seed"] == 123 and info["all_seeds"][:2] == [123, 124]
    assert body["parameters"]["prompt"] == "a red cube" and body["parameters"]["seed"] == 123
    for index, b64 in enumerate(body["images"]):
        image = _png(b64)
        assert image.size == (64, 64)
        text = image.info["parameters"]
        assert text.startswith("a red cube\nNegative prompt: blurry\n")
        assert f"Seed: {123 + index}" in text and "Sampler: Euler" in text and "Steps: 2" in text
        assert text == info["infotexts"][index]


def test_txt2img_same_seed_same_pixels_and_send_images_false(client):
    first = _png(txt2img(client, prompt="repeat", seed=7)["images"][0])
    second = _png(txt2img(client, prompt="repeat", seed=7)["images"][0])
    assert first.tobytes() == second.tobytes()
    quiet = txt2img(client, prompt="repeat", seed=7, send_images=False)
    assert quiet["images"] == [] and json.loads(quiet["info"])["seed"] == 7  # A1111: [], never null


@pytest.mark.parametrize(("body", "field"), [
    ({"sampler_name": "No Such Sampler"}, "No Such Sampler"),
    ({"width": 4}, "width"),
    ({"height": 7}, "height"),
    ({"steps": -1}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"cfg_scale": "lots"}, "cfg_scale"),
])
def test_txt2img_bad_input_is_422_with_message(client, body, field):
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, "prompt": "x", **body})
    assert response.status_code == 422, response.text
    error = response.json()
    assert set(error) == {"error", "detail", "body", "errors"}
    assert field in error["detail"]
    assert client.get("/sdapi/v1/progress").status_code == 200  # still serving


def test_malformed_bodies_are_4xx_not_500(client):
    for content in (b"{not json", b"[]", b"null", json.dumps({"prompt": 5, "seed": "x"}).encode()):
        response = client.post("/sdapi/v1/txt2img", content=content, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500, (content, response.status_code)
        assert response.json()["error"]
    assert client.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"}).status_code == 422
    assert client.post("/sdapi/v1/options", content=b"[1,2]",
                       headers={"Content-Type": "application/json"}).status_code == 422


def test_concurrent_txt2img_requests_all_complete(client):
    seeds = [11, 12, 13, 14]
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def run(seed: int) -> None:
        try:
            results[seed] = txt2img(client, prompt=f"thread {seed}", seed=seed)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and sorted(results) == seeds
    for seed, body in results.items():
        text = _png(body["images"][0]).info["parameters"]
        assert text.startswith(f"thread {seed}\n") and f"Seed: {seed}," in text


def test_progress_and_interrupt_during_generation(server, client):
    _, webui = server
    outcome: dict = {}

    def run() -> None:
        outcome["body"] = client.post("/sdapi/v1/txt2img", json={"prompt": "slow", "seed": 1, "steps": 400,
                                                                 "width": 128, "height": 128}).json()

    thread = threading.Thread(target=run)
    thread.start()
    seen = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get("/sdapi/v1/progress").json()
        if body["state"]["sampling_step"] >= 2:
            seen = body
            break
        time.sleep(0.05)
    assert seen is not None, "the generation never reported progress"
    assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 400 and seen["eta_relative"] > 0
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(60)
    assert not thread.is_alive()
    info = json.loads(outcome["body"]["info"])
    assert info["infotexts"] and "Steps: 400" in info["infotexts"][0]
    assert client.get("/sdapi/v1/progress").json()["progress"] == 0  # idle again


# ------------------------------------------------------------------------------------------- png-info


def test_png_info_round_trip_runs_infotext_pasted_callbacks(server, client):
    _, webui = server

    def rename_lora(text: str, params: dict) -> None:  # what the Lora extension does with `Lora hashes`
        params["Prompt"] = params["Prompt"].replace("<lora:old_name:", "<lora:new_name:")

    webui.callbacks.add("infotext_pasted", rename_lora)
    try:
        body = txt2img(client, prompt="castle <lora:old_name:0.5>", seed=99, cfg_scale=5)
        b64 = body["images"][0]
        for image in (b64, "data:image/png;base64," + b64):
            info = client.post("/sdapi/v1/png-info", json={"image": image}).json()
            assert info["info"] == json.loads(body["info"])["infotexts"][0]
            params = info["parameters"]
            assert params["Seed"] == "99" and params["CFG scale"] == "5" and params["Steps"] == "2"
            assert params["Size-1"] == "64" and params["Sampler"]
            assert params["Prompt"].startswith("castle <lora:new_name:0.5>")
    finally:
        webui.callbacks.remove("infotext_pasted", rename_lora)

    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    empty = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(plain.getvalue()).decode()}).json()
    assert empty["info"] == "" and empty["parameters"] == {}


# -------------------------------------------------------------------------------------- limits, schema


def test_body_over_50mb_is_413(client):
    big = b'{"prompt": "' + b"a" * (51 * 1024 * 1024) + b'"}'
    response = client.post("/sdapi/v1/txt2img", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"] == "RequestTooLarge"

    def chunks():  # no Content-Length: counted while streaming
        yield b'{"prompt": "'
        for _ in range(52):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    streamed = client.post("/sdapi/v1/png-info", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert client.get("/sdapi/v1/progress").status_code == 200


def test_openapi_describes_routes_with_models(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in ("txt2img", "options", "sd-models", "progress", "interrupt", "png-info", "samplers", "cmd-flags",
                 "refresh-checkpoints"):
        assert f"/sdapi/v1/{path}" in paths
    post = paths["/sdapi/v1/txt2img"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Txt2ImgRequest")
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Txt2ImgResponse")
    assert "422" in post["responses"] and "401" in post["responses"]
    schemas = spec["components"]["schemas"]
    assert schemas["Txt2ImgRequest"]["properties"]["width"]["minimum"] == 8  # then floored to a multiple of 8
    assert {"images", "parameters", "info"} <= set(schemas["Txt2ImgResponse"]["properties"])
    options_schema = schemas["Options"]["properties"]
    assert options_schema["CLIP_stop_at_last_layers"]["maximum"] == 12
    assert options_schema["samples_format"]["enum"] == ["png", "jpg", "jpeg", "webp"]
    assert schemas["Options"]["additionalProperties"] is True  # keys of extensions this WebUI lacks are kept
