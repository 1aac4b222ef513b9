"""LoRAs through a real generation: tags in the prompt change the image, the infotext records `Lora hashes`, the
same set a second time touches zero layers, the hires pass uses `hr=` weights, and bad tags/files are reported
in the comments while the generation and the other LoRAs go on."""

from __future__ import annotations

import numpy as np
import pytest

from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.lora_testing import assert_bitwise_equal, state_snapshot


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    ui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("webui"))])
    ui.models.get()
    return ui


def generate(webui, prompt, **kwargs):
    p = StableDiffusionProcessingTxt2Img(prompt=prompt, seed=11, steps=3, width=64, height=64, sampler_name="Euler",
                                         do_not_save_samples=True, **kwargs)
    p.validate(webui)
    with webui.queue_lock:
        return process_images(webui, p)


def pixels(processed):
    return np.asarray(processed.images[0], dtype=np.int16)


def test_lora_changes_image_records_hash_and_repeats_for_free(webui):
    engine = webui.services["lora"]
    model = webui.models.current
    pristine = state_snapshot(model)
    plain = generate(webui, "a cat")
    with_lora = generate(webui, "a cat <lora:demo_lora:0.8>")
    assert engine.last_report.stats.layers_touched > 0
    assert np.abs(pixels(plain) - pixels(with_lora)).max() > 0
    shorthash = engine.registry.find("demo_lora").shorthash
    assert f'Lora hashes: "demo_lora: {shorthash}"' in with_lora.infotexts[0]
    assert "<lora:demo_lora:0.8>" in with_lora.infotexts[0]  # the prompt as typed
    again = generate(webui, "a cat <lora:demo_lora:0.8>")
    assert engine.last_report.stats.layers_touched == 0
    assert np.array_equal(pixels(again), pixels(with_lora))
    back = generate(webui, "a cat")
    assert np.array_equal(pixels(back), pixels(plain))
    assert_bitwise_equal(model, pristine)


def test_bad_tags_and_missing_loras_are_comments_not_failures(webui):
    processed = generate(webui, "a cat <lora:demo_loha:abc> <lora:nope:1> <lora:demo_lokr:0.5>")
    assert len(processed.images) == 1
    assert "<lora:demo_loha:abc>: weight 'abc' is not a number" in processed.comments
    assert "Lora not found: nope" in processed.comments
    assert [a.network.name for a in webui.services["lora"].active] == ["demo_lokr"]
    generate(webui, "a cat")


def test_hires_pass_uses_hr_weight_and_lists_both_passes(webui):
    engine = webui.services["lora"]
    processed = generate(webui, "a cat <lora:demo_lora:1:hr=0.3>", enable_hr=True, hr_scale=1.5,
                         hr_second_pass_steps=2, denoising_strength=0.5,
                         hr_prompt="a cat <lora:demo_lora:1:hr=0.3> <lora:demo_ia3:0.5>")
    requests = {a.network.name: a.request for a in engine.active}
    assert requests["demo_lora"].unet_multiplier == 0.3 and requests["demo_ia3"].unet_multiplier == 0.5
    infotext = processed.infotexts[0]
    assert "demo_lora: " in infotext and "demo_ia3: " in infotext
    assert processed.images[0].size == (96, 96)
    generate(webui, "a cat")


def test_trigger_words_are_added_at_the_placeholder_and_recorded(webui):
    options = webui.options
    try:
        options.set("lora_auto_trigger", "Activation text", save=False)
        processed = generate(webui, "a cat, _tags_, outdoors <lora:demo_lora:0.8> <lora:demo_ia3:0.5>")
        first_line = processed.infotexts[0].splitlines()[0]
        assert first_line == "a cat, sunset style, dramatic light, outdoors <lora:demo_lora:0.8> <lora:demo_ia3:0.5>"
        assert "Lora trigger words: Activation text" in processed.infotexts[0]
        options.set("lora_auto_trigger", "Top training tags", save=False)
        options.set("lora_auto_trigger_tags", 2, save=False)
        processed = generate(webui, "a cat <lora:demo_lora:0.8> <lora:demo_loha:1> masterpiece")
        first_line = processed.infotexts[0].splitlines()[0]
        assert first_line == "a cat <lora:demo_lora:0.8> <lora:demo_loha:1> masterpiece, sunset style, watercolor"
    finally:
        options.set("lora_auto_trigger", "Off", save=False)
    plain = generate(webui, "a cat <lora:demo_lora:0.8>")
    assert plain.infotexts[0].splitlines()[0] == "a cat <lora:demo_lora:0.8>"
