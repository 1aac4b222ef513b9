"""Flux.1 in the host: the BFL single file (plain, ComfyUI-prefixed, ComfyUI-bundled), its Forge-folder companions
and the diffusers folder load to the same weights and give the same image for the same seed; our config-derived
BFL -> diffusers names agree with diffusers' own single-file converter key by key; the flow-matching schedule is
diffusers' FlowMatchEulerDiscreteScheduler's."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers
from PIL import Image
from safetensors.torch import save_file

from modules import checkpoint_convert, flux_model, flux_sampling
from modules.host import WebUI
from modules.processing import ProcessingError, StableDiffusionProcessingTxt2Img, process_images
from modules.sd_models import ModelLoadError
from modules.webui_server import ServerThread, create_app
from tests.helpers import flux_factory
from tests.helpers.hashes import payload_hash


@pytest.fixture(scope="module")
def flux_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("flux")
    ckpt = home / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    flux_factory.write_diffusers_folder(ckpt / "tiny-flux", seed=2)
    flux_factory.write_bfl_file(ckpt / "tiny-flux-bfl.safetensors", seed=2)
    flux_factory.write_bfl_file(ckpt / "tiny-flux-comfy.safetensors", seed=2, comfy=True)
    flux_factory.write_bfl_file(ckpt / "tiny-flux-bundled.safetensors", seed=2, bundled=True)
    flux_factory.write_companions(home / "models", seed=2)
    return home


@pytest.fixture(scope="module")
def webui(flux_home):
    return WebUI.create(["--data-dir", str(flux_home), "--no-embedded-default"])


def generate(webui, checkpoint, **kwargs):
    webui.models.load(checkpoint)
    args = dict(prompt="a photo of a red cat", negative_prompt="", seed=11, steps=3, width=64, height=64,
                sampler_name="Euler", cfg_scale=1.0, do_not_save_samples=True)
    args.update(kwargs)
    p = StableDiffusionProcessingTxt2Img(**args)
    with webui.queue_lock:
        processed = process_images(webui, p)
    return np.asarray(processed.images[0]), processed.infotexts[0], processed


def test_every_layout_loads_the_same_weights(webui):
    reference = {name: module.state_dict() for name, module in webui.models.load("tiny-flux").torch_modules().items()}
    for name in ("tiny-flux-bfl.safetensors", "tiny-flux-comfy.safetensors", "tiny-flux-bundled.safetensors"):
        model = webui.models.load(name)
        assert model.family == "Flux" and model.prediction_type == "flow"
        for part, module in model.torch_modules().items():
            state = module.state_dict()
            assert state.keys() == reference[part].keys()
            assert all(torch.equal(state[k], reference[part][k]) for k in state), (name, part)


def test_single_file_and_diffusers_folder_give_the_same_image(webui):
    folder, info_folder, _ = generate(webui, "tiny-flux")
    single, info_single, _ = generate(webui, "tiny-flux-bfl.safetensors")
    assert folder.shape == (64, 64, 3) and folder.std() > 1
    assert np.array_equal(folder, single)
    assert "Model family: Flux" in info_single and "Distilled CFG Scale: 3.5" in info_single
    assert "Model: tiny-flux-bfl," in info_single and "Model: tiny-flux," in info_folder


def test_seed_guidance_and_cfg_change_the_image(webui):
    base, _, _ = generate(webui, "tiny-flux")
    again, _, _ = generate(webui, "tiny-flux")
    other_seed, _, _ = generate(webui, "tiny-flux", seed=12)
    guided, info, _ = generate(webui, "tiny-flux", distilled_cfg_scale=1.0)
    cfg, _, _ = generate(webui, "tiny-flux", cfg_scale=3.0, negative_prompt="blue sky")
    assert np.array_equal(base, again)
    for changed in (other_seed, guided, cfg):
        assert not np.array_equal(base, changed)
    assert "Distilled CFG Scale: 1," in info


def test_other_sampler_falls_back_to_euler_with_a_comment(webui):
    _, info, processed = generate(webui, "tiny-flux", sampler_name="DPM++ 2M")
    assert "Sampler: Euler," in info
    assert any("not available for Flux" in c for c in processed.comments)


def test_batch_and_hires_fix(webui):
    _, _, processed = generate(webui, "tiny-flux", batch_size=2, enable_hr=True, hr_scale=1.5,
                               denoising_strength=0.5, hr_upscaler="Latent", width=64, height=64)
    assert len(processed.images) == 2 and processed.images[0].size == (96, 96)
    assert not np.array_equal(np.asarray(processed.images[0]), np.asarray(processed.images[1]))


def test_size_not_a_multiple_of_16_is_refused(webui):
    with pytest.raises(ProcessingError, match="multiples of 16"):
        generate(webui, "tiny-flux", width=72, height=64)


def test_missing_companions_are_named(tmp_path):
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    flux_factory.write_bfl_file(ckpt / "lonely.safetensors", seed=2)
    lonely = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"])
    with pytest.raises(ModelLoadError, match=r"CLIP-L text encoder .* models/text_encoder/"):
        lonely.models.load("lonely.safetensors")
    assert lonely.models.current is None


def test_bfl_names_match_diffusers_single_file_converter():
    """Key by key: the tiny model's tensors (values, except the single blocks' fused linear1, which diffusers splits
    at the real model's fixed 3072 width), and a real-size Flux.1-dev on the meta device (names and shapes)."""
    built = flux_factory.build_tiny_flux(seed=4)
    bfl = flux_factory.bfl_state_dict(built, prefix=flux_model.COMFY_PREFIX)
    ours = built["unet"].state_dict()
    fused = [k for k in bfl if ".linear1." in k]
    given = {k: v.clone() for k, v in bfl.items()}
    for key in fused:  # diffusers' split sizes are the real model's: give it tensors of that size
        rows = 3 * 3072 + 4 * 3072
        given[key] = torch.zeros((rows, *bfl[key].shape[1:]), device="meta")
    theirs = convert_flux_transformer_checkpoint_to_diffusers(given)
    assert theirs.keys() == ours.keys()
    split_names = ("attn.to_q.", "attn.to_k.", "attn.to_v.", "proj_mlp.")
    compared = 0
    for key, tensor in theirs.items():
        if key.startswith("single_transformer_blocks.") and any(n in key for n in split_names):
            continue
        assert torch.equal(tensor, ours[key]), key
        compared += 1
    assert compared > 60

    config = flux_model.base_config()
    with torch.device("meta"):
        real = FluxTransformer2DModel.from_config(config["transformer"])
    shapes = {k: tuple(v.shape) for k, v in real.state_dict().items()}
    key_map, transforms = flux_model.bfl_key_map(config["transformer"], shapes)
    meta_bfl = checkpoint_convert.diffusers_to_ldm({"unet": real}, key_map, {"transforms": transforms})
    inferred = flux_model.infer_transformer_config(meta_bfl, "", config["transformer"])
    assert inferred == {**config["transformer"], "out_channels": None}
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(meta_bfl))
    assert {k: tuple(v.shape) for k, v in theirs.items()} == shapes


@pytest.mark.parametrize("dynamic", [True, False])
def test_flow_schedule_matches_diffusers(dynamic):
    config = flux_model.base_config()["scheduler"]["dev" if dynamic else "schnell"]
    steps, seq = 7, 1024
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    mu = flux_sampling.flow_shift_mu(seq, config) if dynamic else None
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert torch.allclose(flux_sampling.flow_sigmas(steps, seq, config), scheduler.sigmas.float(), atol=1e-6)


def test_pack_unpack_round_trip():
    x = torch.randn(2, 16, 6, 8)
    packed = flux_sampling.pack_latents(x)
    assert packed.shape == (2, 12, 64)
    assert torch.equal(flux_sampling.unpack_latents(packed, 6, 8), x)


def test_flux_lora_through_the_api_changes_the_image_and_records_its_hash(flux_home):
    generator = torch.Generator().manual_seed(8)
    inner = 64  # tiny-flux.json: 2 heads x 32
    tensors = {}
    for i in range(2):
        key = f"lora_unet_double_blocks_{i}_img_attn_qkv"
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, inner, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(3 * inner, 4, generator=generator) * 0.5
        tensors[f"{key}.alpha"] = torch.tensor(4.0)
    (flux_home / "models" / "Lora").mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(flux_home / "models" / "Lora" / "fluxstyle.safetensors"))
    webui = WebUI.create(["--data-dir", str(flux_home), "--no-embedded-default", "--nowebui"])
    webui.models.load("tiny-flux-bfl.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        url = f"http://127.0.0.1:{thread.port}/sdapi/v1/txt2img"
        body = {"prompt": "a photo of a red cat", "seed": 11, "steps": 3, "width": 64, "height": 64,
                "sampler_name": "Euler", "cfg_scale": 1}
        plain = httpx.post(url, json=body, timeout=120).json()
        styled = httpx.post(url, json={**body, "prompt": body["prompt"] + " <lora:fluxstyle:1>"}, timeout=120).json()
    finally:
        thread.stop()
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r["images"][0]))).convert("RGB"))
              for r in (plain, styled)]
    assert np.abs(images[0].astype(int) - images[1].astype(int)).mean() > 1
    info = json.loads(styled["info"])["infotexts"][0]
    file_hash = payload_hash(flux_home / "models" / "Lora" / "fluxstyle.safetensors")
    assert f'Lora hashes: "fluxstyle: {file_hash[:12]}"' in info and "Model family: Flux" in info
