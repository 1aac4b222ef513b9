"""The same tiny model as an A1111 single file and as a diffusers folder gives bitwise identical images; SD1, SD2
and SDXL single files all load and generate."""

from __future__ import annotations

import numpy as np
import pytest

from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.model_factory import write_diffusers_folder, write_single_file


def generate(webui, checkpoint):
    webui.models.load(checkpoint)
    p = StableDiffusionProcessingTxt2Img(prompt="a red house, (sunset:1.2)", negative_prompt="blurry", seed=5,
                                         steps=3, width=64, height=64, sampler_name="DPM++ 2M",
                                         do_not_save_samples=True)
    with webui.queue_lock:
        processed = process_images(webui, p)
    return np.asarray(processed.images[0]), processed.infotexts[0]


@pytest.mark.parametrize("family", ["SD1", "SDXL"])
def test_single_file_and_diffusers_folder_give_identical_images(tmp_path, family):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    write_single_file(ckpt_dir / "tiny.safetensors", family, seed=3)
    write_diffusers_folder(ckpt_dir / "tiny-diffusers", family, seed=3)
    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"])
    single, info_single = generate(webui, "tiny.safetensors")
    folder, info_folder = generate(webui, "tiny-diffusers")
    assert np.array_equal(single, folder)
    assert "Model: tiny," in info_single and "Model: tiny-diffusers," in info_folder


def test_sd1_sd2_sdxl_single_files_generate(tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    for family in ("SD1", "SD2", "SDXL"):
        write_single_file(ckpt_dir / f"{family.lower()}.safetensors", family, seed=1, v_prediction=family == "SD2")
    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default"])
    images = {}
    for family in ("SD1", "SD2", "SDXL"):
        images[family], infotext = generate(webui, f"{family.lower()}.safetensors")
        assert webui.models.current.family == family
        assert images[family].shape == (64, 64, 3) and f"Model: {family.lower()}," in infotext
    assert webui.models.current.prediction_type == "epsilon"
    webui.models.load("sd2.safetensors")
    assert webui.models.current.prediction_type == "v_prediction"
