"""LoRA step schedules on a Flux generation: `stop=` and `start=` gate a Flux LoRA per step of the flow-matching loop
(the weights are rewritten only at the steps where the weight changes), and a gated generation lies between the plain
and the always-on one; `te=` keyframes re-encode the prompt mid-pass, as on SD models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lorakit.prompt.extra_network import LoraStepState
from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers import flux_factory


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    home = tmp_path_factory.mktemp("flux-sched")
    models = home / "models"
    flux_factory.write_bfl_file(models / "Stable-diffusion" / "tiny-flux.safetensors", seed=2)
    flux_factory.write_companions(models, seed=2)
    generator = torch.Generator().manual_seed(8)
    tensors = {}
    for i in range(2):
        key = f"lora_unet_double_blocks_{i}_img_attn_qkv"
        tensors[f"{key}.lora_down.weight"] = torch.randn(4, 64, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(3 * 64, 4, generator=generator) * 0.5
    for name, module in flux_factory.tiny_flux_model(seed=2).text_encoders[0].named_modules():
        if isinstance(module, torch.nn.Linear) and "layers" in name:
            key = "lora_te1_" + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(4, module.in_features, generator=generator)
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 4, generator=generator) * 0.3
    (models / "Lora").mkdir()
    save_file(tensors, str(models / "Lora" / "fluxstyle.safetensors"))
    webui = WebUI.create(["--data-dir", str(home), "--no-embedded-default", "--nowebui"])
    webui.models.load("tiny-flux.safetensors")
    return webui


def generate(webui, prompt):
    p = StableDiffusionProcessingTxt2Img(prompt=prompt, negative_prompt="", seed=11, steps=6, width=64, height=64,
                                         sampler_name="Euler", cfg_scale=1.0, do_not_save_samples=True)
    with webui.queue_lock:
        processed = process_images(webui, p)
    return np.asarray(processed.images[0]).astype(int), p, processed


def test_stop_and_start_gate_a_flux_lora_per_step(webui):
    plain, _, _ = generate(webui, "a red cat")
    always, _, _ = generate(webui, "a red cat <lora:fluxstyle:0:1>")  # te 0, unet 1
    stopped, p, processed = generate(webui, "a red cat <lora:fluxstyle:0:1:stop=3>")
    history = [step for step, _, _ in p.generation_state.get(LoraStepState).history]
    assert history == [0, 3]  # on at step 0, off at step 3, untouched in between
    assert np.abs(stopped - plain).mean() > 0.5 and np.abs(stopped - always).mean() > 0.5
    assert "fluxstyle" in processed.infotexts[0]
    _, p, _ = generate(webui, "a red cat <lora:fluxstyle:0:1:start=2>")
    assert [step for step, _, _ in p.generation_state.get(LoraStepState).history] == [0, 2]


def test_text_encoder_keyframes_re_encode_the_flux_prompt(webui):
    fixed, _, _ = generate(webui, "a red cat <lora:fluxstyle:te=0.2:unet=0>")
    moving, p, _ = generate(webui, "a red cat <lora:fluxstyle:te=0.2@0,1@3:unet=0>")
    # rewritten while the weight moves, not after it reached the last keyframe (0.2 + 3 x 0.8/3 is exactly 1)
    assert [step for step, _, _ in p.generation_state.get(LoraStepState).history] == [0, 1, 2, 3]
    assert not p.generation_state.conditioning_stale
    assert np.abs(moving - fixed).mean() > 0.5
