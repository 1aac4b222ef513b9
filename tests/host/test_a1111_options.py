"""A1111's option keys in `GET /sdapi/v1/options` with A1111's names, types and defaults (the expected values below
are copied by hand from A1111's `modules/shared_options.py`, the outside reference), stored-only options documented
as having no effect, unknown keys kept as A1111 keeps them, the read-only `sd_checkpoint_hash`, strict JSON types,
and ENSD (`eta_noise_seed_delta`) changing only samplers that draw noise."""

from __future__ import annotations

import hashlib
import json

import httpx
import numpy as np
import pytest

from modules.host import WebUI
from modules.infotext import parse_generation_parameters
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from modules.shared_options_a1111 import HONOURED, NO_EFFECT, STORED
from modules.webui_server import ServerThread, create_app
from tests.helpers.model_factory import write_single_file

# key: A1111's default (A1111 1.10 modules/shared_options.py and the Lora extension's sd_lora)
A1111_DEFAULTS = {
    "sd_vae": "Automatic", "sd_vae_overrides_per_model_preferences": True, "sd_vae_checkpoint_cache": 0,
    "auto_vae_precision": True, "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "send_seed": True, "send_size": True, "jpeg_quality": 80, "webp_lossless": False, "samples_format": "png",
    "samples_save": True, "grid_format": "png", "grid_save": True, "enable_pnginfo": True, "save_txt": False,
    "img2img_color_correction": False, "img2img_fix_steps": False, "img2img_background_color": "#ffffff",
    "inpainting_mask_weight": 1.0, "initial_noise_multiplier": 1.0, "img2img_extra_noise": 0.0,
    "face_restoration_model": "CodeFormer", "face_restoration": False, "code_former_weight": 0.5,
    "sd_lora": "None", "CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0, "sd_hypernetwork": "None",
    "upscaler_for_img2img": None, "ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8,
    "realesrgan_enabled_models": ["R-ESRGAN 4x+", "R-ESRGAN 4x+ Anime6B"], "tiling": False,
    "eta_ddim": 0.0, "eta_ancestral": 1.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0,
    "k_sched_type": "Automatic", "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "uni_pc_variant": "bh1",
    "uni_pc_order": 3, "always_discard_next_to_last_sigma": False, "enable_emphasis": True,
    "comma_padding_backtrack": 20, "sd_checkpoints_limit": 1, "sd_unet": "Automatic", "upcast_attn": False,
    "cross_attention_optimization": "Automatic", "s_min_uncond": 0.0, "token_merging_ratio": 0.0,
    "pad_cond_uncond": False, "batch_cond_uncond": True, "persistent_cond_cache": True,
    "interrogate_clip_num_beams": 1, "interrogate_clip_min_length": 24, "interrogate_clip_max_length": 48,
    "interrogate_deepbooru_score_threshold": 0.5, "deepbooru_use_spaces": True, "return_grid": True,
    "do_not_show_images": False, "js_modal_lightbox": True, "quicksettings_list": ["sd_model_checkpoint"],
    "hidden_tabs": [], "infotext_styles": "Apply if any", "add_model_hash_to_info": True,
    "add_model_name_to_info": True, "disable_weights_auto_swap": True, "show_progressbar": True,
    "live_previews_enable": True, "show_progress_type": "Approx NN", "live_preview_content": "Prompt",
    "live_preview_refresh_period": 1000, "outdir_samples": "", "save_to_dirs": True,
    "directories_filename_pattern": "[date]", "samples_filename_pattern": "", "export_for_4chan": True,
    "img_downscale_threshold": 4.0, "target_side_length": 4000, "api_enable_requests": True,
    "api_forbid_local_requests": True, "sdxl_crop_top": 0, "sdxl_refiner_low_aesthetic_score": 2.5,
    "extra_networks_card_width": 0, "extra_networks_add_text_separator": " ", "disabled_extensions": [],
    "disable_all_extensions": "none", "lora_preferred_name": "Alias from file", "lora_add_hashes_to_infotext": True,
    "extra_networks_default_multiplier": 1.0,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("opts")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=0)
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--nowebui"])
    webui.models.load("tiny.safetensors")
    thread = ServerThread(create_app(webui), host="127.0.0.1", port=0).start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{thread.port}", timeout=120) as client:
            yield client, webui
    finally:
        thread.stop()


def test_every_a1111_key_with_a1111_type_and_default(server):
    client, _ = server
    options = client.get("/sdapi/v1/options").json()
    wrong = {key: (options.get(key, "<missing>"), want) for key, want in A1111_DEFAULTS.items()
             if key not in options or options[key] != want or type(options[key]) is not type(want)}
    assert wrong == {}
    assert set(HONOURED) | set(STORED) <= set(options)


def test_stored_only_options_say_they_have_no_effect(server):
    _, webui = server
    infos = webui.options.infos
    for key in STORED:
        assert "No effect in this WebUI" in infos[key].comment, key
    for key in HONOURED:
        assert NO_EFFECT not in infos[key].comment, key


def test_checkpoint_hash_is_read_only(server):
    client, webui = server
    path = webui.models.current.checkpoint.path
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert client.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] == sha
    assert client.post("/sdapi/v1/options", json={"sd_checkpoint_hash": "f" * 64}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] == sha


def test_a1111_client_settings_round_trip(server):
    client, _ = server
    before = client.get("/sdapi/v1/options").json()
    wanted = {"send_seed": False, "jpeg_quality": 42, "img2img_color_correction": True,
              "face_restoration_model": "GFPGAN", "code_former_weight": 1, "ESRGAN_tile": 256,
              "upscaler_for_img2img": None, "realesrgan_enabled_models": ["R-ESRGAN 4x+"], "sd_lora": "None"}
    assert client.post("/sdapi/v1/options", json=wanted).status_code == 200
    try:
        after = client.get("/sdapi/v1/options").json()
        assert {key: after[key] for key in wanted} == {**wanted, "code_former_weight": 1.0}
    finally:
        client.post("/sdapi/v1/options", json={key: before[key] for key in wanted})
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == before["jpeg_quality"]


def test_unknown_keys_are_kept_as_sent_and_survive_a_restart(server):
    client, webui = server
    body = {"controlnet_model_cache_size": 3, "some_extension": {"nested": [1, 2]}, "send_size": False}
    assert client.post("/sdapi/v1/options", json=body).status_code == 200
    try:
        options = client.get("/sdapi/v1/options").json()
        assert options["controlnet_model_cache_size"] == 3 and options["some_extension"] == {"nested": [1, 2]}
        assert options["send_size"] is False
        saved = json.loads(webui.paths.config_file.read_text())
        assert saved["some_extension"] == {"nested": [1, 2]}
        again = WebUI.create(["--data-dir", str(webui.paths.data_dir), "--no-embedded-default"],
                             load_extensions_now=False)
        assert again.options.as_dict()["controlnet_model_cache_size"] == 3
    finally:
        assert client.post("/sdapi/v1/options", json={"send_size": True}).status_code == 200


@pytest.mark.parametrize("body", [{"send_seed": "yes"}, {"jpeg_quality": 0}, {"jpeg_quality": 2.5},
                                  {"infotext_styles": "Sometimes"}, {"sd_vae": 5}])
def test_known_keys_keep_their_types(server, body):
    client, _ = server
    before = client.get("/sdapi/v1/options").json()
    response = client.post("/sdapi/v1/options", json=body)
    assert response.status_code == 422 and set(response.json()) == {"error", "detail", "body", "errors"}
    key = next(iter(body))
    assert key in response.text
    assert client.get("/sdapi/v1/options").json()[key] == before[key]


def test_ensd_changes_only_noise_drawing_samplers(server):
    _, webui = server

    def run(sampler: str, ensd: int):
        p = StableDiffusionProcessingTxt2Img(prompt="ensd", seed=11, steps=3, width=64, height=64,
                                             sampler_name=sampler, do_not_save_samples=True,
                                             override_settings={"eta_noise_seed_delta": ensd})
        result = process_images(webui, p)
        return np.asarray(result.images[0]), parse_generation_parameters(result.infotexts[0])

    plain, plain_info = run("Euler a", 0)
    shifted, shifted_info = run("Euler a", 31337)
    shifted_again, _ = run("Euler a", 31337)
    assert "ENSD" not in plain_info and shifted_info["ENSD"] == "31337"
    assert not np.array_equal(plain, shifted) and np.array_equal(shifted, shifted_again)
    euler, _ = run("Euler", 0)
    euler_ensd, _ = run("Euler", 31337)
    assert np.array_equal(euler, euler_ensd)  # no noise per step: ENSD changes nothing
    assert webui.options.get("eta_noise_seed_delta") == 0  # the override was restored


@pytest.mark.parametrize("value, message", [
    (json.loads("[" * 500 + "]" * 500), "nested deeper than 8"),
    ("x" * 70_000, "at most 65536"),
])
def test_unknown_keys_that_could_not_be_served_back_are_refused(server, value, message):
    client, webui = server
    body = {"send_size": False, "hostile_extension_option": value}
    response = client.post("/sdapi/v1/options", json=body)
    assert response.status_code == 422 and "hostile_extension_option" in response.text and message in response.text
    options = client.get("/sdapi/v1/options")  # nothing of the request was applied, and the listing still answers
    assert options.status_code == 200 and "hostile_extension_option" not in options.json()
    assert options.json()["send_size"] is True
    assert "hostile_extension_option" not in webui.paths.config_file.read_text()


def test_unknown_key_with_nan_is_refused(server):
    client, _ = server
    response = client.post("/sdapi/v1/options", content=b'{"nan_extension_option": NaN}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422 and "nan_extension_option" in response.text
    assert "nan_extension_option" not in client.get("/sdapi/v1/options").json()
