"""Forge's "VAE / Text Encoder" selection (`forge_additional_modules`) over real HTTP, with a tiny Flux single file,
its companions in Forge's folders, a second Flux VAE, a tiny SD1 checkpoint and a 4-channel SD VAE.

A selected Flux VAE wins over the automatic first one: the model reloads with exactly that file's weights, the
image changes and the infotext names it (`Module 1: ae2`); the three accepted spellings (relative, absolute, bare
file name) store the same relative name; every bad entry (missing, traversal, outside, wrong suffix, a 4-channel VAE
for Flux, a file that is no module, two VAEs) is a 422 naming it, with the option and the model (same object,
weights bitwise) untouched; for the SD1 model the selected 4-channel VAE acts as the SD VAE and clearing the
selection restores the checkpoint's own VAE bitwise. A request's pasted `infotext` with Forge's `Distilled CFG Scale`
sets the guidance."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.host import WebUI
from modules.webui_server import ServerThread, create_app
from tests.helpers import flux_factory
from tests.helpers.model_factory import tiny_vae_states

OPTION = "forge_additional_modules"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("forge-modules")
    models = flux_factory.write_picker_models(home / "models")
    ldm, diffusers_vae = tiny_vae_states("SD1", 7)
    save_file(ldm, str(models / "VAE" / "sd-vae.safetensors"))
    save_file({"lora_unet_x.lora_down.weight": torch.ones(2, 2)}, str(models / "VAE" / "not-a-vae.safetensors"))
    (models / "text_encoder" / "notes.txt").write_text("not a model")
    webui = WebUI.create(["--data-dir", str(home), "--no-embedded-default", "--nowebui"])
    webui.models.load("tiny-flux-bfl.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        yield f"http://127.0.0.1:{thread.port}", webui, models, diffusers_vae
    finally:
        thread.stop()


def post_options(base, values):
    return httpx.post(base + "/sdapi/v1/options", json=values, timeout=120)


def txt2img(base):
    body = {"prompt": "a photo of a red cat", "seed": 11, "steps": 2, "width": 64, "height": 64,
            "sampler_name": "Euler", "cfg_scale": 1}
    answer = httpx.post(base + "/sdapi/v1/txt2img", json=body, timeout=120).json()
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB"), dtype=np.int16)
    return image, json.loads(answer["info"])["infotexts"][0]


def snapshot(model):
    return {name: {k: v.detach().clone() for k, v in module.state_dict().items()}
            for name, module in model.torch_modules().items()}


def same(a, b):
    return a.keys() == b.keys() and all(a[n].keys() == b[n].keys() and all(torch.equal(a[n][k], b[n][k])
                                                                            for k in a[n]) for n in a)


def same_tensor(loaded, file_tensor):
    """The loaded weight is the file's float32 tensor, as the model's dtype and device hold it (bf16 on CUDA)."""
    return torch.equal(loaded.cpu(), file_tensor.to(loaded.dtype))


def use_flux(base, webui):
    assert post_options(base, {OPTION: [], "sd_model_checkpoint": "tiny-flux-bfl.safetensors"}).status_code == 200
    assert webui.models.current.is_flux


def test_option_is_listed_and_a_selected_vae_wins_reloading_the_model(server):
    base, webui, models, _ = server
    use_flux(base, webui)
    assert httpx.get(base + "/sdapi/v1/options", timeout=30).json()[OPTION] == []
    before_model = webui.models.current
    before, info = txt2img(base)
    assert "Module 1: ae," in info and "Module 2: clip_l, Module 3: t5xxl_fp16" in info

    answer = post_options(base, {OPTION: ["VAE/ae2.safetensors"]})
    assert answer.status_code == 200, answer.text
    assert webui.models.current is not before_model  # reloaded, as Forge does
    assert httpx.get(base + "/sdapi/v1/options", timeout=30).json()[OPTION] == ["VAE/ae2.safetensors"]
    wanted = flux_factory.build_tiny_flux(seed=5)["vae"].state_dict()
    loaded = webui.models.current.vae.state_dict()
    assert loaded.keys() == wanted.keys() and all(same_tensor(loaded[k], wanted[k]) for k in wanted)
    after, info = txt2img(base)
    assert "Module 1: ae2," in info
    assert np.abs(after - before).mean() > 1

    reloaded = webui.models.current  # the same selection in Forge's spellings: stored alike, no second reload
    for spelling in (str(models / "VAE" / "ae2.safetensors"), "ae2.safetensors", "VAE/./ae2.safetensors"):
        assert post_options(base, {OPTION: [spelling]}).status_code == 200
        assert webui.options.get(OPTION) == ["VAE/ae2.safetensors"]
        assert webui.models.current is reloaded

    assert post_options(base, {OPTION: []}).status_code == 200  # back to the automatic choice
    again, info = txt2img(base)
    assert "Module 1: ae," in info and np.array_equal(again, before)


@pytest.mark.parametrize(("entries", "named"), [
    (["VAE/missing.safetensors"], "'VAE/missing.safetensors' not found in models/VAE/ or models/text_encoder/"),
    (["VAE/../../config.json"], "'VAE/../../config.json' is not inside models/VAE/ or models/text_encoder/"),
    (["/etc/passwd"], "'/etc/passwd' is not inside"),
    (["Stable-diffusion/sd1.safetensors"], "'Stable-diffusion/sd1.safetensors' is not inside"),
    (["text_encoder/notes.txt"], "'text_encoder/notes.txt' is not a .safetensors file"),
    (["VAE/sd-vae.safetensors"], "sd-vae.safetensors is a 4-channel VAE (SD 1/2/XL); Flux needs the 16-channel VAE"),
    (["VAE/not-a-vae.safetensors"], "not-a-vae.safetensors is not a CLIP-L or T5 text encoder or a 16-channel"),
    (["VAE/ae.safetensors", "VAE/ae2.safetensors"], "ae.safetensors and ae2.safetensors are both a 16-channel Flux"),
    ([["nested"]], "takes a list of text or numbers"),
])
def test_bad_entries_are_422_naming_them_and_touch_nothing(server, entries, named):
    base, webui, _, _ = server
    use_flux(base, webui)
    assert post_options(base, {OPTION: ["VAE/ae2.safetensors"]}).status_code == 200
    model = webui.models.current
    weights = snapshot(model)
    answer = post_options(base, {OPTION: entries})
    assert answer.status_code == 422
    assert named in answer.json()["detail"]
    assert webui.options.get(OPTION) == ["VAE/ae2.safetensors"]
    assert webui.models.current is model and same(snapshot(model), weights)


def test_sd_model_uses_the_selected_sd_vae_and_flux_refuses_it(server):
    base, webui, _, diffusers_vae = server
    assert post_options(base, {OPTION: [], "sd_model_checkpoint": "sd1.safetensors"}).status_code == 200
    model = webui.models.current
    own = {k: v.clone() for k, v in model.vae.state_dict().items()}
    # a Flux VAE and text encoder in the selection do not fit an SD model: not used by it, and no error
    answer = post_options(base, {OPTION: ["VAE/ae.safetensors", "text_encoder/clip_l.safetensors",
                                          "VAE/sd-vae.safetensors"]})
    assert answer.status_code == 200, answer.text
    assert webui.models.current is model
    state = model.vae.state_dict()
    assert all(same_tensor(state[k], diffusers_vae[k]) for k in diffusers_vae)
    _, info = txt2img(base)
    assert "VAE: sd-vae.safetensors" in info and "Module 1" not in info

    weights = snapshot(model)  # Flux cannot take a 4-channel VAE: the switch is refused, the SD model stays
    answer = post_options(base, {"sd_model_checkpoint": "tiny-flux-bfl.safetensors"})
    assert answer.status_code == 422 and "sd-vae.safetensors is a 4-channel VAE" in answer.json()["detail"]
    assert webui.models.current is model and same(snapshot(model), weights)

    assert post_options(base, {OPTION: []}).status_code == 200
    state = model.vae.state_dict()
    assert all(torch.equal(state[k], own[k]) for k in own)  # the checkpoint's own VAE, bitwise
    _, info = txt2img(base)
    assert "VAE:" not in info


def test_a_pasted_forge_infotext_sets_the_distilled_guidance(server):
    """`infotext` of a request (A1111 1.8's paste): Forge's `Distilled CFG Scale` fills `distilled_cfg_scale`."""
    base, webui, _, _ = server
    use_flux(base, webui)
    body = {"prompt": "", "infotext": "a photo of a red cat\nSteps: 2, Sampler: Euler, Schedule type: Simple, "
                                      "CFG scale: 1, Seed: 11, Size: 64x64, Distilled CFG Scale: 2.5"}
    answer = httpx.post(base + "/sdapi/v1/txt2img", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])["infotexts"][0]
    assert "Distilled CFG Scale: 2.5," in info and "Seed: 11," in info
