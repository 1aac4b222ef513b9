"""A1111's smaller routes and fallbacks over real HTTP (uvicorn on 127.0.0.1, a tiny SD1 checkpoint, the Lora
extension loaded with a LoRA the test writes): the routes clients probe and their shapes, `POST /skip` in a running
batch, `/queue/status`, interrogate's error, sizes floored to /8, unknown scheduler names, 64-bit seeds, PLMS,
`disable_extra_networks`, `tiling`, `override_settings_restore_afterwards`, `send_images`/`save_images`, and bad
input answered 4xx in A1111's error shape while the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from modules.host import WebUI
from modules.images import read_info_from_image
from modules.infotext import parse_generation_parameters
from modules.tiling import circular_padding
from modules.webui_server import ServerThread, create_app
from tests.helpers.lora_testing import write_kohya_lora
from tests.helpers.model_factory import write_single_file

SIZE = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(client, webui) for an API-only server with the Lora extension and a LoRA named `tlora`."""
    data = tmp_path_factory.mktemp("compat")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=0)
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--nowebui", "--api-auth", "u:p"])
    model = webui.models.load("tiny.safetensors")
    write_kohya_lora(webui.paths.lora_dir / "tlora.safetensors", model, rank=4, alpha=4.0, seed=3)
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{thread.port}", auth=("u", "p"), timeout=120) as client:
            assert client.post("/sdapi/v1/refresh-loras").status_code == 200
            yield client, webui
    finally:
        thread.stop()


def txt2img(client: httpx.Client, **body) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SIZE, **body})
    assert response.status_code == 200, response.text
    return response.json()


def image_of(result: dict, index: int = 0) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(result["images"][index]))).convert("RGB"))


def infotext_of(result: dict, index: int = 0) -> dict:
    return parse_generation_parameters(json.loads(result["info"])["infotexts"][index])


def assert_a1111_error(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail", "body", "errors"}
    for word in words:
        assert word in body["detail"], body["detail"]


# ------------------------------------------------------------------------------------------- small routes


def test_routes_clients_probe_answer_with_a1111_shapes(server):
    client, webui = server
    assert client.get("/sdapi/v1/hypernetworks").json() == []
    assert client.get("/sdapi/v1/face-restorers").json() == []
    assert client.get("/sdapi/v1/sd-modules").json() == []
    assert client.get("/sdapi/v1/prompt-styles").json() == []  # no styles.csv in this data folder
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    extensions = client.get("/sdapi/v1/extensions").json()
    lora = next(item for item in extensions if item["name"] == "Lora")
    assert set(lora) == {"name", "remote", "branch", "commit_hash", "version", "commit_date", "enabled"}
    assert lora["enabled"] is True
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["data_dir"] == str(webui.paths.data_dir) and flags["api_auth"] == "<redacted>"


def test_memory_reports_ram_and_cuda_as_a1111(server):
    client, _ = server
    memory = client.get("/sdapi/v1/memory").json()
    ram = memory["ram"]
    assert ram["total"] > 0 and ram["free"] + ram["used"] == ram["total"]
    if torch.cuda.is_available():
        assert set(memory["cuda"]) == {"system", "active", "allocated", "reserved", "inactive", "events"}
        assert memory["cuda"]["system"]["total"] > 0
    else:
        assert memory["cuda"] == {"error": "unavailable"}


def test_interrogate_says_what_it_needs(server):
    client, _ = server
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(png, format="PNG")
    image = base64.b64encode(png.getvalue()).decode()
    assert_a1111_error(client.post("/sdapi/v1/interrogate", json={"image": image, "model": "clip"}), 501,
                       "BLIP", "CLIP", "none is installed")
    assert_a1111_error(client.post("/sdapi/v1/interrogate", json={"image": image, "model": "deepdanbooru"}), 501,
                       "DeepDanbooru")
    assert_a1111_error(client.post("/sdapi/v1/interrogate", json={"image": image, "model": "nope"}), 404, "'nope'")
    assert_a1111_error(client.post("/sdapi/v1/interrogate", json={"image": "not an image"}), 422, "base64")
    assert client.get("/sdapi/v1/hypernetworks").status_code == 200  # still serving


def test_skip_ends_the_current_batch_and_the_next_runs(server):
    client, webui = server
    steps_seen: list[int] = []
    iterations: list[int] = []

    def count(p, step, total):
        iterations.append(p.iteration)
        steps_seen.append(step)

    webui.callbacks.add("process_step", count)
    result: dict = {}
    statuses: list[dict] = []
    body = {**SIZE, "prompt": "skip me", "steps": 200, "n_iter": 2, "seed": 4}
    worker = threading.Thread(target=lambda: result.update(client.post("/sdapi/v1/txt2img", json=body).json()))
    try:
        assert client.post("/sdapi/v1/skip").status_code == 200  # idle: nothing to skip, nothing breaks
        worker.start()
        deadline = time.monotonic() + 60
        while len(steps_seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        statuses.append(client.get("/queue/status").json())
        assert client.post("/sdapi/v1/skip").status_code == 200
        worker.join(120)
    finally:
        webui.callbacks.remove("process_step", count)
    first = iterations.count(0)
    assert 3 <= first < 200  # the first batch ended early
    assert iterations.count(1) == 200  # the second ran in full
    assert len(result["images"]) == 2 and json.loads(result["info"])["interrupted"] is False
    assert statuses[0]["msg"] == "estimation" and statuses[0]["queue_size"] == 1
    idle = client.get("/queue/status").json()
    assert idle == {"msg": "estimation", "rank": None, "queue_size": 0, "avg_event_process_time": None,
                    "avg_event_concurrent_process_time": None, "rank_eta": None, "queue_eta": 0}


# ---------------------------------------------------------------------------------------------- fallbacks


def test_sizes_are_floored_to_multiples_of_8(server):
    client, _ = server
    result = txt2img(client, prompt="odd size", width=100, height=70, seed=1)
    assert image_of(result).shape == (64, 96, 3)
    assert infotext_of(result)["Size-1"] == "96" and infotext_of(result)["Size-2"] == "64"
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json={**SIZE, "width": 7}), 422, "width")


def test_unknown_scheduler_name_uses_automatic(server):
    client, _ = server
    normal = txt2img(client, prompt="sched", seed=2, scheduler="normal")
    automatic = txt2img(client, prompt="sched", seed=2, scheduler="Automatic")
    assert np.array_equal(image_of(normal), image_of(automatic))
    assert "Unknown schedule type 'normal'; used Automatic" in json.loads(normal["info"])["comments"]


def test_seeds_up_to_64_bits_as_a1111(server):
    client, _ = server
    big = 2**40 + 5
    first = txt2img(client, prompt="big seed", seed=big, batch_size=2)
    again = txt2img(client, prompt="big seed", seed=big, batch_size=2)
    assert json.loads(first["info"])["all_seeds"] == [big, big + 1]
    assert infotext_of(first)["Seed"] == str(big)
    assert np.array_equal(image_of(first), image_of(again))
    assert not np.array_equal(image_of(first, 0), image_of(first, 1))
    assert txt2img(client, prompt="max", seed=2**64 - 1)["images"]
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json={**SIZE, "seed": 2**64}), 422, "seed")
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json={**SIZE, "seed": 2**64 - 1, "batch_size": 2}), 422,
                       "seed must be -1 (random) or between 0 and")


def test_plms_sampler(server):
    client, _ = server
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert "PLMS" in names
    plms = txt2img(client, prompt="plms", seed=3, sampler_name=None, sampler_index="PLMS")
    ddim = txt2img(client, prompt="plms", seed=3, sampler_name="DDIM")
    assert infotext_of(plms)["Sampler"] == "PLMS"
    assert not np.array_equal(image_of(plms), image_of(ddim))


def test_disable_extra_networks_strips_the_tags_without_applying_them(server):
    client, webui = server
    plain = txt2img(client, prompt="a cat", seed=5)
    with_lora = txt2img(client, prompt="a cat <lora:tlora:1>", seed=5)
    disabled = txt2img(client, prompt="a cat <lora:tlora:1>", seed=5, disable_extra_networks=True)
    assert not np.array_equal(image_of(plain), image_of(with_lora))
    assert "Lora hashes" in infotext_of(with_lora)
    assert np.array_equal(image_of(plain), image_of(disabled))  # the LoRA merged by the request before is removed
    assert "Lora hashes" not in infotext_of(disabled)
    assert infotext_of(disabled)["Prompt"] == "a cat <lora:tlora:1>"  # the prompt as typed (A1111)


def test_tiling_is_circular_padding_restored_after(server):
    client, webui = server
    flat = txt2img(client, prompt="tiles", seed=6)
    tiled = txt2img(client, prompt="tiles", seed=6, tiling=True)
    again = txt2img(client, prompt="tiles", seed=6, tiling=True)
    assert infotext_of(tiled)["Tiling"] == "True" and "Tiling" not in infotext_of(flat)
    assert not np.array_equal(image_of(flat), image_of(tiled))
    assert np.array_equal(image_of(tiled), image_of(again))
    model = webui.models.current
    convs = [m for part in (model.unet, model.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.padding_mode == "zeros" for m in convs)
    assert np.array_equal(image_of(flat), image_of(txt2img(client, prompt="tiles", seed=6)))


def test_circular_padding_wraps_the_opposite_edge():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    holder = type("Model", (), {"unet": conv, "vae": torch.nn.Identity()})()
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    wrapped = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    expected = torch.nn.functional.conv2d(wrapped, conv.weight, conv.bias)
    with circular_padding(holder) as switched:
        assert switched == 1
        assert torch.allclose(conv(x), expected, atol=1e-6)
    assert conv.padding_mode == "zeros" and not torch.allclose(conv(x), expected, atol=1e-3)


def test_override_settings_restore_afterwards(server):
    client, _ = server
    options = "/sdapi/v1/options"
    assert client.get(options).json()["CLIP_stop_at_last_layers"] == 1
    txt2img(client, prompt="o", seed=1, override_settings={"CLIP_stop_at_last_layers": 2})
    assert client.get(options).json()["CLIP_stop_at_last_layers"] == 1  # restored (the default)
    kept = txt2img(client, prompt="o", seed=1, override_settings={"CLIP_stop_at_last_layers": 2},
                   override_settings_restore_afterwards=False)
    try:
        assert infotext_of(kept)["Clip skip"] == "2"
        assert client.get(options).json()["CLIP_stop_at_last_layers"] == 2  # kept, as A1111
    finally:
        assert client.post(options, json={"CLIP_stop_at_last_layers": 1}).status_code == 200


def test_unknown_and_read_only_keys_in_override_settings_are_ignored(server):
    client, webui = server
    sha = webui.models.current.checkpoint.sha256
    result = txt2img(client, prompt="x", seed=1, override_settings={"some_extension_option": 3,
                                                                   "sd_checkpoint_hash": "0" * 64})
    assert len(result["images"]) == 1
    assert client.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] == sha


def test_send_images_false_and_save_images(server):
    client, webui = server
    quiet = txt2img(client, prompt="quiet", seed=8, send_images=False)
    assert quiet["images"] == [] and json.loads(quiet["info"])["seed"] == 8
    folder = webui.paths.outputs_dir / "txt2img-images"
    before = set(folder.rglob("*.*")) if folder.exists() else set()
    txt2img(client, prompt="not saved", seed=8)
    assert (set(folder.rglob("*.*")) if folder.exists() else set()) == before
    shown = txt2img(client, prompt="saved", seed=8, save_images=True)
    saved = sorted(set(folder.rglob("*.png")) - before)
    assert len(saved) == 1 and saved[0].name.endswith("-8.png")
    with Image.open(saved[0]) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), image_of(shown))


@pytest.mark.parametrize(("fmt", "extra", "pil"), [("jpg", {"jpeg_quality": 30}, "JPEG"),
                                                    ("webp", {"webp_lossless": True}, "WEBP")])
def test_samples_format_and_quality_apply_to_saved_images(server, fmt, extra, pil):
    client, webui = server
    folder = webui.paths.outputs_dir / "txt2img-images"
    assert client.post("/sdapi/v1/options", json={"samples_format": fmt, **extra}).status_code == 200
    try:
        before = set(folder.rglob(f"*.{fmt}")) if folder.exists() else set()
        shown = txt2img(client, prompt=f"as {fmt}", seed=9, save_images=True)
        saved = sorted(set(folder.rglob(f"*.{fmt}")) - before)
        assert len(saved) == 1
        with Image.open(saved[0]) as image:
            assert image.format == pil
            text, _ = read_info_from_image(image)
            assert text == json.loads(shown["info"])["infotexts"][0]  # EXIF UserComment, as A1111
            pixels = np.asarray(image.convert("RGB")).astype(int)
        difference = np.abs(pixels - image_of(shown).astype(int)).mean()
        if fmt == "webp":
            assert difference == 0  # lossless
        else:
            assert difference > 0.5  # quality 30 is visibly lossy
    finally:
        assert client.post("/sdapi/v1/options", json={"samples_format": "png", "jpeg_quality": 80,
                                                      "webp_lossless": False}).status_code == 200


def test_bad_input_is_4xx_and_the_server_keeps_serving(server):
    client, _ = server
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json={**SIZE, "seed": "abc"}), 422, "seed")
    assert_a1111_error(client.post("/sdapi/v1/txt2img", json={**SIZE, "width": 20000, "height": 20000}), 422,
                       "width")
    assert_a1111_error(client.post("/sdapi/v1/options", json={"jpeg_quality": 500}), 422, "jpeg_quality")
    assert_a1111_error(client.post("/sdapi/v1/options", json={"samples_format": "gif"}), 422, "samples_format")
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 80
    assert len(txt2img(client, prompt="still fine", seed=1)["images"]) == 1
