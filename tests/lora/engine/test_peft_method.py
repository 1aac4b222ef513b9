"""The "diffusers" LoRA method (`lorakit.engine.peft_method`): LoRAs as diffusers/PEFT adapters in the forward pass.

* A real txt2img generation with a kohya LoRA and with a PEFT-format one (written by diffusers' own
  `save_lora_weights`) gives the same image under "native merge" and "diffusers" (max abs pixel difference <= 2 of 255;
  measured: 1), both clearly different from the image without LoRA (mean difference 6-13); the infotext names the
  method, and pasting it brings the method back.
* PEFT-layout alphas diffusers does not read (unprefixed metadata, `.alpha` tensors) still apply.
* Text-encoder and UNet multipliers are applied separately (text-encoder and UNet outputs compared with native merge).
* A repeat costs nothing; removal (and switching methods) leaves the model's state dict bitwise pristine.
* Both methods at once (PEFT wraps the layers the native patcher writes into) equal both merged natively.
* Native merge falls back to diffusers for a real format only diffusers places (diffusers 0.17-0.24
  `train_dreambooth_lora` files: text-encoder keys `...q_proj.lora_linear_layer.down.weight`); features diffusers
  cannot do (block weights, dyn=, schedules, LoHa) fall back to native merge with a warning.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.engine.loader import NothingFitsError, load_network
from lorakit.formats.peft_metadata import peft_alphas
from lorakit.library.registry import NetworkRegistry
from modules.api import models
from modules.api.api import apply_infotext
from modules.host import WebUI
from modules.infotext import get_override_settings, parse_generation_parameters
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.lora_testing import (
    assert_bitwise_equal,
    lora_targets,
    state_snapshot,
    tiny_loaded_model,
    write_kohya_lora,
)

PIXEL_TOLERANCE = 2  # max abs difference of 8-bit pixels between the methods
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def write_diffusers_lora(folder, model, name, seed):
    """A PEFT LoRA saved by diffusers' own `save_lora_weights` (prefixed `lora_adapter_metadata`, alpha != rank)."""
    torch.manual_seed(seed)
    unet_config = LoraConfig(r=4, lora_alpha=8, target_modules=UNET_TARGETS, init_lora_weights=False)
    te_config = LoraConfig(r=4, lora_alpha=2, target_modules=TE_TARGETS, init_lora_weights=False)
    unet_layers = get_peft_model_state_dict(inject_adapter_in_model(unet_config, copy.deepcopy(model.unet)))
    te_layers = get_peft_model_state_dict(inject_adapter_in_model(te_config, copy.deepcopy(model.text_encoders[0])))
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        str(folder), unet_lora_layers={k: v * 0.3 for k, v in unet_layers.items()},
        text_encoder_lora_layers={k: v * 0.3 for k, v in te_layers.items()}, weight_name=f"{name}.safetensors",
        unet_lora_adapter_metadata=unet_config.to_dict(), text_encoder_lora_adapter_metadata=te_config.to_dict())


def engine_for(folder, model):
    registry = NetworkRegistry([folder], None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    return engine


@torch.no_grad()
def outputs(model):
    """Text-encoder hidden states and one UNet evaluation on fixed inputs."""
    ids = torch.arange(3, 3 + 16).unsqueeze(0) % model.text_encoders[0].config.vocab_size
    hidden = [encoder(ids, output_hidden_states=True).hidden_states[-2] for encoder in model.text_encoders]
    generator = torch.Generator().manual_seed(0)
    config = model.unet.config
    latent = torch.randn(1, config.in_channels, 16, 16, generator=generator)
    context = torch.randn(1, 16, config.cross_attention_dim, generator=generator)
    extra = {}
    if model.is_sdxl:
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim,
                                       generator=generator),
            "time_ids": torch.tensor([[128.0, 128.0, 0.0, 0.0, 128.0, 128.0]])}
    noise = model.unet(latent, torch.tensor([500]), encoder_hidden_states=context, **extra).sample
    return hidden, noise


def assert_close(got, want, tol=1e-5):
    for a, b in zip(got, want):
        a, b = (a, b) if isinstance(a, list) else ([a], [b])
        for x, y in zip(a, b):
            assert ((x - y).norm() / y.norm()).item() < tol


def wrapped(model):
    return sum(isinstance(m, BaseTunerLayer) for part in model.torch_modules().values() for m in part.modules())


# ------------------------------------------------------------------------------------------- engine-level checks


@pytest.mark.parametrize("family", ["SD1", "SDXL"])
def test_multipliers_te_and_unet_separately_match_native_and_removal_is_pristine(tmp_path, family):
    model = tiny_loaded_model(family)
    pristine, base = state_snapshot(model), outputs(model)
    write_kohya_lora(tmp_path / "k.safetensors", model, conv=True, sgm=family == "SDXL", seed=3)
    engine = engine_for(tmp_path, model)
    for te, unet in ((0.3, 0.0), (0.0, 0.7)):
        engine.activate([NetworkRequest("k", te, unet)])
        native = outputs(model)
        report = engine.activate([NetworkRequest("k", te, unet)], method="diffusers")
        assert [a.method for a in report.active] == ["diffusers"] and not report.warnings and not report.errors
        assert report.stats.layers_restored > 0
        assert_bitwise_equal_weights(model, pristine)  # the merge is gone: diffusers adds in the forward pass
        got = outputs(model)
        assert_close(got, native)
        if te == 0:  # scale 0 adds exact zeros: the text encoders give the pristine result
            assert all(torch.equal(a, b) for a, b in zip(got[0], base[0]))
        if unet == 0:
            assert torch.equal(got[1], base[1])
    again = engine.activate([NetworkRequest("k", 0.0, 0.7)], method="diffusers")
    assert not again.peft.changed and again.stats.layers_touched == 0  # the same set costs nothing
    engine.deactivate_all()
    assert wrapped(model) == 0
    assert_bitwise_equal(model, pristine)  # keys and values
    assert all(not hasattr(m, "peft_config") for m in model.torch_modules().values())


def assert_bitwise_equal_weights(model, pristine):
    """Every original parameter (under its PEFT-wrapped name too) holds its pristine value."""
    for key, tensor in state_snapshot(model).items():
        original = key.replace(".base_layer.", ".")
        if original in pristine:
            assert torch.equal(tensor, pristine[original]), key


def test_both_methods_at_once_equal_both_merged(tmp_path):
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    write_kohya_lora(tmp_path / "a.safetensors", model, seed=1)
    write_kohya_lora(tmp_path / "b.safetensors", model, seed=2, conv=True)
    engine = engine_for(tmp_path, model)
    engine.activate([NetworkRequest("a", 0.8, 0.8), NetworkRequest("b", 0.5, 0.9)])
    both_native = outputs(model)
    ones = lambda target: 1.0  # noqa: E731 - block weights of 1: the same numbers, but only native merge does them
    report = engine.activate([NetworkRequest("a", 0.8, 0.8), NetworkRequest("b", 0.5, 0.9, layer_factor=ones)],
                             method="diffusers")
    assert [a.method for a in report.active] == ["diffusers", "native"]
    assert report.warnings == ["b: applied with native merge: diffusers cannot apply block weights"]
    for name, target in engine.index.layers.items():  # the native targets are the wrapped layers' base layers
        part, path = ("unet", name[5:]) if name.startswith("unet.") else ("text_encoders.0", name.split(".", 2)[2])
        layer = model.torch_modules()[part].get_submodule(path)
        if isinstance(layer, BaseTunerLayer):
            assert layer.get_base_layer() is target.module
    assert_close(outputs(model), both_native)
    report = engine.activate([NetworkRequest("a", 0.8, 0.8)], method="diffusers")
    assert report.stats.layers_restored > 0 and report.peft.injected == 0 and report.peft.removed == 0
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_peft_alphas_diffusers_would_not_read_are_kept(tmp_path):
    """PEFT-layout files whose alpha diffusers ignores (unprefixed `lora_adapter_metadata` as other tools write it, or
    `<layer>.alpha` tensors) give the native result under diffusers too (alpha / rank folded into lora_B)."""
    import json  # noqa: PLC0415 - imported where it is needed

    model = tiny_loaded_model("SD1")
    torch.manual_seed(4)
    config = LoraConfig(r=4, lora_alpha=12, target_modules=UNET_TARGETS + TE_TARGETS, init_lora_weights=False)
    unet = get_peft_model_state_dict(inject_adapter_in_model(config, copy.deepcopy(model.unet)))
    te = get_peft_model_state_dict(inject_adapter_in_model(config, copy.deepcopy(model.text_encoders[0])))
    tensors = {f"unet.{k}": v * 0.3 for k, v in unet.items()} | {f"text_encoder.{k}": v * 0.3 for k, v in te.items()}
    save_file(tensors, str(tmp_path / "meta.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 12})})
    alphas = {k.replace(".lora_A.weight", ".alpha"): torch.tensor(12.0) for k in tensors if k.endswith("lora_A.weight")}
    save_file(tensors | alphas, str(tmp_path / "keys.safetensors"))
    engine = engine_for(tmp_path, model)
    for name in ("meta", "keys"):
        engine.activate([NetworkRequest(name, 0.8, 0.6)])
        native = outputs(model)
        report = engine.activate([NetworkRequest(name, 0.8, 0.6)], method="diffusers")
        assert [a.method for a in report.active] == ["diffusers"] and not report.warnings
        assert_close(outputs(model), native)
    engine.deactivate_all()


def old_diffusers_format(model, seed, unet=True):
    """(tensors of a diffusers 0.17-0.24 `train_dreambooth_lora --train_text_encoder` file, the same LoRA in kohya
    format). UNet: `unet.<path>.lora.down.weight`; text encoder: `text_encoder.text_model.<path>.lora_linear_layer.
    down.weight`; no alphas (scale 1)."""
    generator = torch.Generator().manual_seed(seed)
    old, kohya = {}, {}
    for name, module in lora_targets(model).items():
        if name.startswith("unet.") and not unet:
            continue
        down = torch.randn(4, module.weight.shape[1], generator=generator) * 0.2
        up = torch.randn(module.weight.shape[0], 4, generator=generator) * 0.2
        if name.startswith("unet."):
            key = f"unet.{name[5:]}.lora"
            old[f"{key}.down.weight"], old[f"{key}.up.weight"] = down, up
        else:
            key = f"text_encoder.text_model.{name.split('.', 2)[2]}.lora_linear_layer"
            old[f"{key}.down.weight"], old[f"{key}.up.weight"] = down, up
        kohya_key = "lora_unet_" + name[5:].replace(".", "_") if name.startswith("unet.") else \
            "lora_te_text_model_" + name.split(".", 2)[2].replace(".", "_")
        kohya |= {f"{kohya_key}.lora_down.weight": down, f"{kohya_key}.lora_up.weight": up,
                  f"{kohya_key}.alpha": torch.tensor(4.0)}
    return old, kohya


def test_native_falls_back_to_diffusers_for_a_format_only_diffusers_places(tmp_path):
    model = tiny_loaded_model("SD1")
    pristine, layers = state_snapshot(model), len(lora_targets(model))
    old, kohya = old_diffusers_format(model, seed=5)
    save_file(old, str(tmp_path / "old.safetensors"))
    save_file(kohya, str(tmp_path / "same_kohya.safetensors"))
    te_only, _ = old_diffusers_format(model, seed=6, unet=False)
    save_file(te_only, str(tmp_path / "te_only.safetensors"))
    save_file({"something.else.weight": torch.ones(2, 2)}, str(tmp_path / "junk.safetensors"))
    engine = engine_for(tmp_path, model)
    native = load_network(engine.registry.find("old"), engine.index)  # what the native loader makes of it
    assert native.unmatched_keys and all("lora_linear_layer" in key for key in native.unmatched_keys)
    with pytest.raises(NothingFitsError):
        load_network(engine.registry.find("te_only"), engine.index)

    engine.activate([NetworkRequest("same_kohya", 0.7, 0.6)])
    want = outputs(model)
    report = engine.activate([NetworkRequest("old", 0.7, 0.6)])
    assert [a.method for a in report.active] == ["diffusers"]
    assert len(report.active[0].adapter.layers) == layers > len(native.modules)
    assert report.warnings[0].startswith(f"old: applied with diffusers ({layers} layers) because native merge could "
                                         "not place it: old: 48 keys matched no layer")
    assert_close(outputs(model), want)
    again = engine.activate([NetworkRequest("old", 0.7, 0.6)])
    assert not again.peft.changed  # the verdict and the adapter are cached

    report = engine.activate([NetworkRequest("te_only", 1.0, 1.0), NetworkRequest("junk", 1.0, 1.0)])
    assert [(a.network.name, a.method) for a in report.active] == [("te_only", "diffusers")]
    assert "nothing in it fits" in report.errors["junk"]  # neither places it: the native error stands
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_what_diffusers_cannot_do_falls_back_to_native_with_the_reason(tmp_path):
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    write_kohya_lora(tmp_path / "k.safetensors", model)
    name, layer = next(iter(lora_targets(model).items()))
    key = "lora_unet_" + name[5:].replace(".", "_")
    out_features, in_features = layer.weight.shape
    save_file({f"{key}.hada_w1_a": torch.randn(out_features, 2), f"{key}.hada_w1_b": torch.randn(2, in_features),
               f"{key}.hada_w2_a": torch.randn(out_features, 2), f"{key}.hada_w2_b": torch.randn(2, in_features),
               f"{key}.alpha": torch.tensor(2.0)}, str(tmp_path / "loha.safetensors"))
    engine = engine_for(tmp_path, model)
    report = engine.activate([NetworkRequest("k", dyn_dim=2), NetworkRequest("k", scheduled=True),
                              NetworkRequest("loha"), NetworkRequest("k", 0.5)], method="diffusers")
    assert [a.method for a in report.active] == ["native", "native", "native", "diffusers"]
    assert report.warnings == ["k: applied with native merge: diffusers cannot apply dyn=",
                               "k: applied with native merge: diffusers cannot apply step schedules",
                               "loha: applied with native merge: diffusers cannot apply LoHa"]
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


# ------------------------------------------------------------------------------------------- through generation


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    ui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("webui"))])
    model = ui.models.get()
    folder = ui.paths.lora_dir
    write_kohya_lora(folder / "pm_kohya.safetensors", model, conv=True, seed=7, alpha=4.0)
    write_diffusers_lora(folder, model, "pm_peft", seed=8)
    registry = ui.services["lora"].registry
    registry.refresh()
    metadata = registry.find("pm_peft").metadata  # diffusers' own form: one LoraConfig per part, prefixed keys
    assert peft_alphas(metadata, "unet") == (8.0, {}) and peft_alphas(metadata, "text_encoder") == (2.0, {})
    return ui


def generate(webui, prompt, method=None, **kwargs):
    overrides = {"lora_method": method} if method else {}
    p = StableDiffusionProcessingTxt2Img(prompt=prompt, seed=5, steps=3, width=64, height=64, sampler_name="Euler",
                                         do_not_save_samples=True, override_settings=overrides, **kwargs)
    p.validate(webui)
    with webui.queue_lock:
        return process_images(webui, p)


def pixels(processed):
    return np.asarray(processed.images[0], dtype=np.int16)


@pytest.mark.parametrize("lora", ["pm_kohya", "pm_peft"])
def test_generation_same_image_with_both_methods(webui, lora):
    model = webui.models.current
    pristine = state_snapshot(model)
    plain = generate(webui, "a cat")
    native = generate(webui, f"a cat <lora:{lora}:0.9>")
    diffusers = generate(webui, f"a cat <lora:{lora}:0.9>", method="diffusers")
    assert wrapped(model) > 0 and webui.options.get("lora_method") == "native merge"  # override for one generation
    assert not diffusers.comments, diffusers.comments
    difference = np.abs(pixels(native) - pixels(diffusers)).max()
    assert difference <= PIXEL_TOLERANCE, difference
    for image in (native, diffusers):
        assert np.abs(pixels(image) - pixels(plain)).mean() > 3  # clearly changed (measured: mean 6-13 of 255)
    assert "Lora method" not in native.infotexts[0]
    assert "Lora method: diffusers" in diffusers.infotexts[0] and f"{lora}: " in diffusers.infotexts[0]
    again = generate(webui, f"a cat <lora:{lora}:0.9>")  # switching back: no adapter left, same native image
    assert wrapped(model) == 0 and np.array_equal(pixels(again), pixels(native))
    back = generate(webui, "a cat")
    assert np.array_equal(pixels(back), pixels(plain))
    assert_bitwise_equal(model, pristine)


def test_infotext_records_mix_and_pasting_brings_the_method_back(webui):
    mixed = generate(webui, "a dog <lora:pm_kohya:0.8> <lora:pm_peft:0.5:lbw=1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1>",
                     method="diffusers")
    assert "Lora pm_peft: applied with native merge: diffusers cannot apply block weights" in mixed.comments
    assert 'Lora method: "diffusers, native: pm_peft"' in mixed.infotexts[0]
    params = parse_generation_parameters(mixed.infotexts[0], webui.callbacks)
    assert params["Lora method"] == "diffusers"
    assert get_override_settings(params, webui.options) == [("Lora method", "lora_method", "diffusers")]

    diffusers = generate(webui, "a dog <lora:pm_kohya:0.8>", method="diffusers")
    request = apply_infotext(webui, models.Txt2ImgRequest(infotext=diffusers.infotexts[0]))
    assert request.override_settings == {"lora_method": "diffusers"}
    pasted = generate(webui, request.prompt)
    assert "Lora method" not in pasted.infotexts[0]  # without the override: native merge
    replayed = generate(webui, request.prompt, method=request.override_settings["lora_method"])
    assert np.array_equal(pixels(replayed), pixels(diffusers))

    native_text = pasted.infotexts[0]  # LoRAs and no `Lora method`: native merge comes back under "diffusers"
    try:
        webui.options.set("lora_method", "diffusers", save=False)
        params = parse_generation_parameters(native_text, webui.callbacks)
        assert get_override_settings(params, webui.options) == [("Lora method", "lora_method", "native merge")]
        assert get_override_settings(parse_generation_parameters("a dog\nSteps: 3, Seed: 5, Size: 64x64",
                                                                 webui.callbacks), webui.options) == []
    finally:
        webui.options.set("lora_method", "native merge", save=False)
    generate(webui, "a dog")
    assert wrapped(webui.models.current) == 0
