"""VAE selection on a tiny SD1 model: VAE files in A1111's single-file layout, diffusers' layout and as a `.pt` pickle,
the `sd_vae` option (Automatic, None, a file), the bitwise swap back, the infotext's `VAE hash`/`VAE`, bad files,
and the `/sd-vae`, `/refresh-vae` and `POST /options` routes over real HTTP."""

from __future__ import annotations

import gc
import hashlib
import weakref

import httpx
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from modules.host import WebUI
from modules.infotext import parse_generation_parameters
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from modules.sd_vae import VaeLoadError
from modules.webui_server import ServerThread, create_app
from tests.helpers.model_factory import tiny_vae_states, write_single_file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    webui = WebUI.create(["--data-dir", str(root), "--no-embedded-default", "--nowebui"], load_extensions_now=False)
    write_single_file(webui.paths.ckpt_dir / "tiny.safetensors", "SD1", seed=0)
    write_single_file(webui.paths.ckpt_dir / "other.safetensors", "SD1", seed=1)
    vae_dir = webui.vae.vae_dir
    vae_dir.mkdir(parents=True)
    ldm7, want7 = tiny_vae_states("SD1", 7)
    save_file(ldm7, str(vae_dir / "ft-mse.safetensors"))
    _, want9 = tiny_vae_states("SD1", 9)
    save_file(want9, str(vae_dir / "diffusers-layout.safetensors"))  # diffusers AutoencoderKL names
    ldm11, want11 = tiny_vae_states("SD1", 11)
    torch.save({"state_dict": {f"first_stage_model.{k}": v for k, v in ldm11.items()}}, vae_dir / "pickled.pt")
    (vae_dir / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nonsense" + b"x" * 40)
    missing = dict(ldm7)
    missing.pop("decoder.conv_out.weight")
    save_file(missing, str(vae_dir / "incomplete.safetensors"))
    wrong = dict(ldm7)
    wrong["decoder.conv_in.weight"] = torch.zeros(3, 3, 3, 3)
    save_file(wrong, str(vae_dir / "wrong-shape.safetensors"))
    webui.vae.refresh()
    webui.models.load("tiny.safetensors")
    expected = {"ft-mse.safetensors": want7, "diffusers-layout.safetensors": want9, "pickled.pt": want11}
    return webui, expected


def vae_state(webui) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in webui.models.current.vae.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def generate(webui, **kwargs):
    values = {"prompt": "a cat", "seed": 5, "steps": 2, "width": 64, "height": 64, "do_not_save_samples": True}
    values.update(kwargs)
    return process_images(webui, StableDiffusionProcessingTxt2Img(**values))


def test_files_listed_with_names_and_choices(setup):
    webui, _ = setup
    names = [f.name for f in webui.vae.files()]
    assert names == sorted(names, key=str.lower)
    assert {"ft-mse.safetensors", "diffusers-layout.safetensors", "pickled.pt"} <= set(names)
    assert webui.vae.choices()[:2] == ["Automatic", "None"]


@pytest.mark.parametrize("name", ["ft-mse.safetensors", "diffusers-layout.safetensors", "pickled.pt"])
def test_each_layout_loads_exactly_and_none_restores_bitwise(setup, name):
    webui, expected = setup
    original = vae_state(webui)
    webui.options.set("sd_vae", name)
    try:
        assert same_state(vae_state(webui), expected[name])  # converted names, bit for bit
        assert webui.vae.applied(webui.models.current).name == name
    finally:
        webui.options.set("sd_vae", "None")
    assert same_state(vae_state(webui), original)
    assert webui.vae.applied(webui.models.current) is None


def test_image_and_infotext_follow_the_vae(setup):
    webui, _ = setup
    own = generate(webui)
    assert "VAE" not in parse_generation_parameters(own.infotexts[0])
    webui.options.set("sd_vae", "ft-mse.safetensors")
    try:
        swapped = generate(webui)
    finally:
        webui.options.set("sd_vae", "None")
    back = generate(webui)
    params = parse_generation_parameters(swapped.infotexts[0])
    digest = hashlib.sha256((webui.vae.vae_dir / "ft-mse.safetensors").read_bytes()).hexdigest()
    assert params["VAE hash"] == digest[:10]
    assert params["VAE"] == "ft-mse.safetensors"
    assert '"sd_vae_name": "ft-mse.safetensors"' in swapped.js()
    assert not np.array_equal(np.asarray(own.images[0]), np.asarray(swapped.images[0]))  # same latents, other VAE
    assert np.array_equal(np.asarray(own.images[0]), np.asarray(back.images[0]))


def test_automatic_uses_a_vae_named_like_the_checkpoint(setup):
    webui, expected = setup
    vae_dir = webui.vae.vae_dir
    ldm, want = tiny_vae_states("SD1", 13)
    save_file(ldm, str(vae_dir / "other.safetensors"))  # named like checkpoint other.safetensors
    webui.vae.refresh()
    try:
        assert webui.options.get("sd_vae") in ("Automatic", "None")
        webui.options.set("sd_vae", "Automatic")
        webui.models.load("other.safetensors")
        assert webui.vae.applied(webui.models.current).name == "other.safetensors"
        assert same_state(vae_state(webui), want)
        webui.options.set("sd_vae", "None")  # overrides per-model preferences on: None wins
        assert webui.vae.applied(webui.models.current) is None
        webui.options.set("sd_vae_overrides_per_model_preferences", False)
        webui.options.set("sd_vae", "ft-mse.safetensors")
        assert webui.vae.applied(webui.models.current).name == "other.safetensors"  # the near file wins
    finally:
        webui.options.set("sd_vae_overrides_per_model_preferences", True)
        webui.options.set("sd_vae", "None")
        (vae_dir / "other.safetensors").unlink()
        webui.vae.refresh()
        webui.models.load("tiny.safetensors")
    assert webui.vae.applied(webui.models.current) is None


@pytest.mark.parametrize(("name", "words"), [
    ("garbage.safetensors", "not a safetensors file"),
    ("incomplete.safetensors", "decoder.conv_out.weight"),
    ("wrong-shape.safetensors", "shape"),
])
def test_bad_file_is_a_clear_error_and_changes_nothing(setup, name, words):
    webui, _ = setup
    webui.options.set("sd_vae", "ft-mse.safetensors")
    before = vae_state(webui)
    try:
        with pytest.raises(VaeLoadError, match=words) as caught:
            webui.options.set("sd_vae", name)
        assert name in str(caught.value)
        assert same_state(vae_state(webui), before)  # still the previous VAE, untouched
        assert webui.options.get("sd_vae") == "ft-mse.safetensors"  # the option is put back
    finally:
        webui.options.set("sd_vae", "None")


def test_http_routes_and_options(setup):
    webui, _ = setup
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{thread.port}", timeout=60) as client:
            listed = client.get("/sdapi/v1/sd-vae").json()
            assert {"model_name": "ft-mse.safetensors",
                    "filename": str(webui.vae.vae_dir / "ft-mse.safetensors")} in listed
            ldm, _ = tiny_vae_states("SD1", 21)
            save_file(ldm, str(webui.vae.vae_dir / "new-drop.safetensors"))
            assert "new-drop.safetensors" not in [x["model_name"] for x in client.get("/sdapi/v1/sd-vae").json()]
            assert client.post("/sdapi/v1/refresh-vae").status_code == 200
            assert "new-drop.safetensors" in [x["model_name"] for x in client.get("/sdapi/v1/sd-vae").json()]

            ok = client.post("/sdapi/v1/options", json={"sd_vae": "new-drop.safetensors", "jpeg_quality": 55})
            assert ok.status_code == 200, ok.text
            options = client.get("/sdapi/v1/options").json()
            assert options["sd_vae"] == "new-drop.safetensors" and options["jpeg_quality"] == 55
            assert webui.vae.applied(webui.models.current).name == "new-drop.safetensors"

            bad = client.post("/sdapi/v1/options", json={"sd_vae": "wrong-shape.safetensors"})
            assert bad.status_code == 422 and bad.json()["error"] == "VaeLoadError"
            assert "wrong-shape.safetensors" in bad.json()["detail"]
            unknown = client.post("/sdapi/v1/options", json={"sd_vae": "no-such-vae.pt"})
            assert unknown.status_code == 422 and "no-such-vae.pt" in unknown.json()["detail"]
            assert client.get("/sdapi/v1/options").json()["sd_vae"] == "new-drop.safetensors"

            body = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "seed": 3,
                    "override_settings": {"sd_vae": "None"}}
            response = client.post("/sdapi/v1/txt2img", json=body)
            assert response.status_code == 200, response.text
            assert "VAE hash" not in response.json()["info"]  # the override: the checkpoint's own VAE
            assert webui.vae.applied(webui.models.current).name == "new-drop.safetensors"  # restored after
            assert client.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    finally:
        thread.stop()


def test_an_unloaded_model_is_not_kept_alive_by_its_vae_copies(tmp_path):
    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"], load_extensions_now=False)
    write_single_file(webui.paths.ckpt_dir / "m.safetensors", "SD1", seed=0)
    webui.vae.vae_dir.mkdir(parents=True)
    ldm, _ = tiny_vae_states("SD1", 3)
    save_file(ldm, str(webui.vae.vae_dir / "v.safetensors"))
    webui.vae.refresh()
    webui.options.set("sd_vae", "v.safetensors")
    model = webui.models.load("m.safetensors")
    assert webui.vae.applied(model).name == "v.safetensors"
    ref = weakref.ref(model)
    del model
    webui.models.unload()
    gc.collect()
    assert ref() is None
