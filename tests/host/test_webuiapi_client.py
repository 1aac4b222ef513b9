"""The `webuiapi` PyPI client (test-only dependency) against our server on 127.0.0.1: set_options with `sd_vae` and
`jpeg_quality`, txt2img with and without `send_images`, `skip` during a batch, and the get_* calls clients make."""

from __future__ import annotations

import threading
import time

import pytest

from modules.host import WebUI
from modules.infotext import parse_generation_parameters
from modules.webui_server import ServerThread, create_app
from tests.helpers.model_factory import write_single_file, write_vae_file

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    data = tmp_path_factory.mktemp("webuiapi")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=0)
    (data / "models" / "VAE").mkdir(parents=True)
    write_vae_file(data / "models" / "VAE" / "client-vae.safetensors", seed=5)
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nSharp,sharp focus,blurry\n", encoding="utf-8")
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--nowebui"])
    webui.models.load("tiny.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        yield webuiapi.WebUIApi(host="127.0.0.1", port=thread.port, sampler="Euler a", steps=2), webui
    finally:
        thread.stop()


def test_set_options_with_sd_vae_and_jpeg_quality(api):
    client, webui = api
    client.set_options({"sd_vae": "client-vae.safetensors", "jpeg_quality": 61})
    try:
        options = client.get_options()
        assert options["sd_vae"] == "client-vae.safetensors" and options["jpeg_quality"] == 61
        result = client.txt2img(prompt="vae", width=64, height=64, seed=2)
        params = parse_generation_parameters(result.info["infotexts"][0])
        assert params["VAE"] == "client-vae.safetensors" and len(params["VAE hash"]) == 10
    finally:
        client.set_options({"sd_vae": "None", "jpeg_quality": 80})
    assert webui.vae.applied(webui.models.current) is None


def test_txt2img_with_and_without_images(api):
    client, _ = api
    shown = client.txt2img(prompt="a fox", width=64, height=64, seed=3, styles=["Sharp"])
    assert len(shown.images) == 1 and shown.image.size == (64, 64)
    assert shown.info["all_prompts"] == ["a fox, sharp focus"] and shown.info["styles"] == ["Sharp"]
    quiet = client.txt2img(prompt="a fox", width=64, height=64, seed=3, send_images=False)
    assert quiet.images == [] and quiet.info["seed"] == 3


def test_skip_during_a_batch(api):
    client, webui = api
    steps: list[int] = []

    def count(p, step, total):
        steps.append(p.iteration)

    webui.callbacks.add("process_step", count)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        out=client.txt2img(prompt="skip", width=64, height=64, seed=4, steps=150, n_iter=2)))
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while len(steps) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        client.skip()
        worker.join(120)
    finally:
        webui.callbacks.remove("process_step", count)
    assert steps.count(0) < 150 and steps.count(1) == 150
    assert len(result["out"].images) == 2


def test_get_calls(api):
    client, webui = api
    assert client.get_prompt_styles() == [{"name": "Sharp", "prompt": "sharp focus", "negative_prompt": "blurry"}]
    assert client.get_hypernetworks() == []
    assert client.get_face_restorers() == []
    memory = client.get_memory()
    assert memory["ram"]["total"] > 0 and "cuda" in memory
    assert client.get_sd_vae() == [{"model_name": "client-vae.safetensors",
                                    "filename": str(webui.vae.vae_dir / "client-vae.safetensors")}]
    assert client.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert "data_dir" in client.get_cmd_flags()
    assert "PLMS" in [s["name"] for s in client.get_samplers()]
    assert "Automatic" in [s["label"] for s in client.get_schedulers()]
    assert [m["model_name"] for m in client.get_sd_models()] == ["tiny"]
    assert client.util_get_current_model().startswith("tiny.safetensors")
    assert "Latent" in [m["name"] for m in client.get_latent_upscale_modes()]
    assert client.get_progress()["state"]["job_count"] == 0
    client.refresh_checkpoints()
    client.interrupt()
    assert len(client.txt2img(prompt="after", width=64, height=64, seed=1).images) == 1  # nothing got stuck
