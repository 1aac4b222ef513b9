"""Flux.1 LoRA formats on a tiny Flux (2 double and 2 single blocks, tiny CLIP-L and T5), checked against outside
references: PEFT's own deltas for PEFT/diffusers files written by the PEFT library; diffusers' own converters
(`FluxPipeline.lora_state_dict`, i.e. `FluxLoraLoaderMixin`) + `load_lora_into_transformer`, merged by PEFT, for kohya
and XLabs files; fused BFL projections on diffusers' split layers (LoRA: rows of the up factor; LoKr/LoHa: rows of the
full delta); removal is bitwise pristine; a strength change touches only that LoRA's layers."""

from __future__ import annotations

import copy
import re
import sys

import pytest
import torch
from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin
from lycoris import LycorisNetwork
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.formats.blocks import BlockLayout
from lorakit.formats.keys import LayerIndex, split_key
from lorakit.formats.sd_version import detect_sd_version
from lorakit.library.registry import NetworkRegistry
from lorakit.prompt.block_weights import lbw_values
from lorakit.prompt.tags import parse_tag
from lorakit.web.block_chart import block_label, model_blocks
from modules import flux_model
from modules.cache import DiskCache
from modules.extra_networks import parse_prompt
from modules.host import WebUI
from modules.processing import ProcessingError
from modules.scripts import import_script_file
from tests.helpers import flux_factory
from tests.helpers.handlers import P, make_handler
from tests.helpers.lora_testing import assert_bitwise_equal, state_snapshot
from tests.helpers.lycoris_reference import expected_function, lycoris_parts, randomize_lycoris_module
from tests.helpers.paths import ROOT

TOLERANCE = 1e-5
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2", "proj_mlp", "proj_out",
                "norm1.linear", "norm1_context.linear", "norm.linear"]


@pytest.fixture(scope="module")
def model():
    return flux_factory.tiny_flux_model(seed=1)


def make_engine(folder, model):
    registry = NetworkRegistry([folder], DiskCache(folder / "cache.json"))
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    return engine


def apply(folder, model, name, multiplier=1.0):
    """Our engine's merged weights {"unet.<param>": tensor} with `name` at `multiplier`; the model is put back."""
    pristine = state_snapshot(model)
    engine = make_engine(folder, model)
    report = engine.activate([NetworkRequest(name, te_multiplier=multiplier, unet_multiplier=multiplier)])
    assert not report.errors, report.errors
    merged = state_snapshot(model)
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)
    return pristine, merged, report


def peft_merged(transformer, state_dict):
    """The transformer's weights after diffusers loads `state_dict` (its own converters ran already) as a PEFT
    adapter and PEFT merges it: {"unet.<param>": tensor} for every layer the adapter wraps."""
    copy_ = copy.deepcopy(transformer)
    # diffusers 0.42's kohya converter leaves the embedders' and the final layer's keys without the `transformer.`
    # prefix, so its own loader would skip them; prefixed here so that they are checked too.
    state_dict = {(k if k.startswith(("transformer.", "text_encoder")) else f"transformer.{k}"): v
                  for k, v in state_dict.items()}
    FluxLoraLoaderMixin.load_lora_into_transformer(state_dict, None, copy_)
    merged = {}
    for path, module in copy_.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            merged[f"unet.{path}.weight"] = module.get_base_layer().weight.detach().clone()
    return merged


def assert_close(ours, reference, pristine):
    assert reference
    for key, want in reference.items():
        assert not torch.equal(want, pristine[key]), f"{key}: the reference changed nothing"
        err = (ours[key] - want).abs().max().item()
        assert err < TOLERANCE, f"{key}: max abs difference {err}"
    changed = {k for k in ours if not torch.equal(ours[k], pristine[k])}
    assert changed == set(reference), sorted(changed ^ set(reference))[:5]


def kohya_file(path, model, rank=4, alpha=2.0, seed=0, skip=("linear1",), text_encoder=False, t5=False):
    """A kohya Flux LoRA (BFL names, `lora_unet_`, alpha) over every transformer Linear but `skip` suffixes; with
    `text_encoder` CLIP-L's (`lora_te1_`), with `t5` T5's (`lora_te2_`) Linears too."""
    generator = torch.Generator().manual_seed(seed)
    module_of = {}
    for diffusers, bfl in flux_model.bfl_module_map(model.unet.config).items():
        module_of.setdefault(bfl[0] if isinstance(bfl, tuple) else bfl, diffusers)
    tensors = {}
    for bfl, rows in flux_factory.bfl_linear_modules(model).items():
        if bfl.endswith(skip):
            continue
        key = "lora_unet_" + bfl.replace(".", "_")
        columns = model.unet.get_submodule(module_of[bfl]).weight.shape[1]
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, columns, generator=generator) * 0.1
        tensors[f"{key}.lora_up.weight"] = torch.randn(rows, rank, generator=generator) * 0.1
        # diffusers' converter drops the final layer's alphas (scale 1, where kohya's trainer uses alpha / rank): the
        # final layer gets alpha = rank here, so both readings agree
        tensors[f"{key}.alpha"] = torch.tensor(float(rank) if bfl.startswith("final_layer") else alpha)
    if text_encoder:
        for name, module in model.text_encoders[0].named_modules():
            if isinstance(module, torch.nn.Linear) and "layers" in name:
                key = "lora_te1_" + ("text_model." + name.removeprefix("text_model.")).replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.1
                tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.1
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
    if t5:
        for name, module in model.text_encoders[1].named_modules():
            if isinstance(module, torch.nn.Linear) and name.startswith("encoder.block."):
                key = "lora_te2_" + name.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.1
                tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.1
                tensors[f"{key}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return tensors


def test_every_bfl_name_resolves(model):
    index = LayerIndex(model)
    for bfl in flux_factory.bfl_linear_modules(model):
        placements = index.resolve_placements("lora_unet_" + bfl.replace(".", "_"))
        expected = {"img_attn.qkv": 3, "txt_attn.qkv": 3, "linear1": 4}.get(bfl.split(".", 2)[-1], 1)
        assert len(placements) == expected, bfl
    assert [p.target.name for p in index.resolve_placements("lora_unet_single_blocks_1_qkv")] == [
        f"unet.single_transformer_blocks.1.attn.to_{x}" for x in "qkv"]
    assert index.resolve("transformer.transformer_blocks.0.attn.to_q").name == "unet.transformer_blocks.0.attn.to_q"
    assert index.resolve("lycoris_single_transformer_blocks_0_proj_mlp").name == \
        "unet.single_transformer_blocks.0.proj_mlp"
    assert split_key("double_blocks.0.processor.qkv_lora2.down.weight") == (
        "lora_unet_double_blocks_0_txt_attn_qkv", "lora_down.weight")


def test_kohya_matches_diffusers_converter(tmp_path, model):
    kohya_file(tmp_path / "kohya.safetensors", model, text_encoder=True)
    pristine, ours, report = apply(tmp_path, model, "kohya")
    reference = peft_merged(model.unet, FluxLoraLoaderMixin.lora_state_dict(str(tmp_path / "kohya.safetensors")))
    te = {k: v for k, v in ours.items() if k.startswith("text_encoders.0.") and not torch.equal(v, pristine[k])}
    assert len(te) == 6 * model.text_encoders[0].config.num_hidden_layers  # q, k, v, out, fc1, fc2 per layer
    unet_ours = {k: v for k, v in ours.items() if not k.startswith("text_encoders.")}
    unet_pristine = {k: v for k, v in pristine.items() if not k.startswith("text_encoders.")}
    assert_close(unet_ours, reference, unet_pristine)


def test_kohya_fused_linear1_is_rows_of_the_up_factor(tmp_path, model):
    """diffusers' kohya converter splits linear1 at the real model's fixed widths, so here the reference is the
    math: each split layer gets rows [a:b) of up @ down * alpha / rank."""
    tensors = kohya_file(tmp_path / "linear1.safetensors", model, skip=("qkv", "proj", "mlp.0", "mlp.2", "lin",
                                                                        "linear2", "img_in", "txt_in", "linear",
                                                                        "in_layer", "out_layer", "modulation.1"))
    assert {k.split(".")[0] for k in tensors} == {f"lora_unet_single_blocks_{i}_linear1" for i in range(2)}
    pristine, ours, _ = apply(tmp_path, model, "linear1", multiplier=0.8)
    inner = model.unet.config.num_attention_heads * model.unet.config.attention_head_dim
    spans = {"attn.to_q": (0, inner), "attn.to_k": (inner, 2 * inner), "attn.to_v": (2 * inner, 3 * inner),
             "proj_mlp": (3 * inner, 7 * inner)}
    reference = {}
    for i in range(2):
        key = f"lora_unet_single_blocks_{i}_linear1"
        delta = tensors[f"{key}.lora_up.weight"] @ tensors[f"{key}.lora_down.weight"] * (2.0 / 4) * 0.8
        for name, (a, b) in spans.items():
            param = f"unet.single_transformer_blocks.{i}.{name}.weight"
            reference[param] = pristine[param] + delta[a:b]
    assert_close({k: v for k, v in ours.items() if k.startswith("unet.")}, reference,
                 {k: v for k, v in pristine.items() if k.startswith("unet.")})


def test_xlabs_matches_diffusers_converter(tmp_path, model):
    generator = torch.Generator().manual_seed(3)
    inner = model.unet.config.num_attention_heads * model.unet.config.attention_head_dim
    tensors = {}
    for i in range(2):
        for part, rows in (("qkv_lora1", 3 * inner), ("qkv_lora2", 3 * inner), ("proj_lora1", inner),
                           ("proj_lora2", inner)):
            tensors[f"double_blocks.{i}.processor.{part}.down.weight"] = torch.randn(4, inner, generator=generator)
            tensors[f"double_blocks.{i}.processor.{part}.up.weight"] = torch.randn(rows, 4, generator=generator) * .1
    for i in range(2):
        tensors[f"single_blocks.{i}.processor.qkv_lora.down.weight"] = torch.randn(4, inner, generator=generator)
        tensors[f"single_blocks.{i}.processor.qkv_lora.up.weight"] = torch.randn(3 * inner, 4, generator=generator)
        tensors[f"single_blocks.{i}.processor.proj_lora.down.weight"] = torch.randn(4, 5 * inner, generator=generator)
        tensors[f"single_blocks.{i}.processor.proj_lora.up.weight"] = torch.randn(inner, 4, generator=generator)
    save_file(tensors, str(tmp_path / "xlabs.safetensors"))
    pristine, ours, _ = apply(tmp_path, model, "xlabs")
    reference = peft_merged(model.unet, FluxLoraLoaderMixin.lora_state_dict(str(tmp_path / "xlabs.safetensors")))
    assert len(reference) == 2 * 8 + 2 * 4  # double: 2 x (q, k, v) + 2 proj; single: q, k, v + proj_out
    unet = {k: v for k, v in ours.items() if k.startswith("unet.")}
    assert_close(unet, reference, {k: v for k, v in pristine.items() if k.startswith("unet.")})


def test_peft_file_matches_peft_deltas(tmp_path, model):
    torch.manual_seed(5)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=PEFT_TARGETS, init_lora_weights=False)
    injected = inject_adapter_in_model(config, copy.deepcopy(model.unet))
    FluxLoraLoaderMixin.save_lora_weights(str(tmp_path), transformer_lora_layers=get_peft_model_state_dict(injected),
                                          weight_name="peft.safetensors",
                                          transformer_lora_adapter_metadata=config.to_dict())
    pristine, ours, _ = apply(tmp_path, model, "peft", multiplier=0.6)
    reference = {}
    for path, module in injected.named_modules():
        if isinstance(module, BaseTunerLayer):
            param = f"unet.{path}.weight"
            reference[param] = pristine[param] + 0.6 * module.get_delta_weight("default")
    assert len(reference) == 2 * 14 + 2 * 6 + 1  # double: 14 Linear targets, single: q k v mlp proj_out norm, proj_out
    assert_close({k: v for k, v in ours.items() if k.startswith("unet.")}, reference,
                 {k: v for k, v in pristine.items() if k.startswith("unet.")})


@pytest.mark.parametrize("algo", ["lokr", "loha", "full"])
def test_fused_qkv_lokr_loha_full_on_split_layers(tmp_path, model, algo):
    """A LyCORIS-style module stored for BFL's fused `img_attn.qkv` (3h x h): each split layer gets its rows of
    the full fused delta."""
    generator = torch.Generator().manual_seed(7)
    inner = model.unet.config.num_attention_heads * model.unet.config.attention_head_dim
    key = "lora_unet_double_blocks_1_img_attn_qkv"
    if algo == "lokr":  # delta = kron(w1, w2) * alpha / rank... full-rank w1/w2: scale 1
        w1, w2 = torch.randn(3, 2, generator=generator), torch.randn(inner, inner // 2, generator=generator) * 0.1
        tensors, delta = {f"{key}.lokr_w1": w1, f"{key}.lokr_w2": w2}, torch.kron(w1, w2)
    elif algo == "loha":
        parts = {name: torch.randn(shape, generator=generator) * 0.3 for name, shape in
                 (("hada_w1_a", (3 * inner, 4)), ("hada_w1_b", (4, inner)), ("hada_w2_a", (3 * inner, 4)),
                  ("hada_w2_b", (4, inner)))}
        tensors = {f"{key}.{n}": t for n, t in parts.items()} | {f"{key}.alpha": torch.tensor(4.0)}
        delta = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
    else:
        delta = torch.randn(3 * inner, inner, generator=generator) * 0.05
        tensors = {f"{key}.diff": delta}
    save_file(tensors, str(tmp_path / f"{algo}.safetensors"))
    pristine, ours, _ = apply(tmp_path, model, algo, multiplier=0.5)
    reference = {}
    for n, letter in enumerate("qkv"):
        param = f"unet.transformer_blocks.1.attn.to_{letter}.weight"
        reference[param] = pristine[param] + 0.5 * delta[n * inner:(n + 1) * inner]
    assert_close({k: v for k, v in ours.items() if k.startswith("unet.")}, reference,
                 {k: v for k, v in pristine.items() if k.startswith("unet.")})


def test_dora_on_a_fused_projection_is_reported_not_dropped(tmp_path, model):
    inner = model.unet.config.num_attention_heads * model.unet.config.attention_head_dim
    key = "lora_unet_double_blocks_0_img_attn_qkv"
    save_file({f"{key}.lora_down.weight": torch.randn(4, inner), f"{key}.lora_up.weight": torch.randn(3 * inner, 4),
               f"{key}.dora_scale": torch.ones(3 * inner, 1),
               "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.randn(4, inner),
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.randn(inner, 4)},
              str(tmp_path / "dora.safetensors"))
    engine = make_engine(tmp_path, model)
    report = engine.activate([NetworkRequest("dora")])
    text = str(report.warnings) + str(report.errors)
    assert "DoRA on a fused projection" in text
    engine.deactivate_all()


def test_strength_change_touches_only_that_loras_layers(tmp_path, model):
    kohya_file(tmp_path / "a.safetensors", model, seed=1, skip=("linear1", "linear2", "mod.lin", "modulation.lin", "in_layer",
                                                                "out_layer", "img_in", "txt_in", "final_layer.linear",
                                                                "adaLN_modulation.1", "mlp.0", "mlp.2"))
    generator = torch.Generator().manual_seed(2)
    inner = model.unet.config.num_attention_heads * model.unet.config.attention_head_dim
    save_file({"lora_unet_single_blocks_1_linear2.lora_down.weight": torch.randn(4, 5 * inner, generator=generator),
               "lora_unet_single_blocks_1_linear2.lora_up.weight": torch.randn(inner, 4, generator=generator)},
              str(tmp_path / "b.safetensors"))
    pristine = state_snapshot(model)
    engine = make_engine(tmp_path, model)
    engine.activate([NetworkRequest("a"), NetworkRequest("b")])
    stats = engine.activate([NetworkRequest("a"), NetworkRequest("b", 1.0, 0.4)]).stats
    assert set(stats.touched) == {"unet.single_transformer_blocks.1.proj_out"}
    stats = engine.activate([NetworkRequest("a", 1.0, 0.3), NetworkRequest("b", 1.0, 0.4)]).stats
    assert "unet.single_transformer_blocks.1.proj_out" not in stats.touched
    assert len(stats.touched) == 2 * 8  # a's layers: q, k, v, add_q, add_k, add_v, to_out, to_add_out per double block
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def flux_block(name):
    """The lora-block-weight Flux slot of a layer (its CLIP, T5, IN, Dnn, Snn, OUT, in our DOUBLEnn/SINGLEnn
    spelling), worked out from the diffusers module name independently of the engine."""
    if name.startswith("text_encoders."):
        return ("CLIP", "T5")[int(name.split(".")[1])]
    match = re.match(r"unet\.(transformer_blocks|single_transformer_blocks)\.(\d+)\.", name)
    if match:
        return ("DOUBLE" if match.group(1) == "transformer_blocks" else "SINGLE") + f"{int(match.group(2)):02d}"
    if name.startswith(("unet.x_embedder", "unet.context_embedder", "unet.time_text_embed.")):
        return "IN"
    assert name.startswith(("unet.proj_out", "unet.norm_out")), name
    return "OUT"


@pytest.fixture
def lbw_setup(tmp_path, model):
    """A kohya Flux LoRA over every Linear of the transformer, CLIP-L and T5; its delta per weight at multiplier 1
    (our engine's, checked against diffusers' converter above) and the handler over it."""
    kohya_file(tmp_path / "Lora" / "every.safetensors", model, skip=(), text_encoder=True, t5=True)
    pristine, merged, _ = apply(tmp_path / "Lora", model, "every")
    deltas = {k: merged[k] - pristine[k] for k in merged if not torch.equal(merged[k], pristine[k])}
    assert {flux_block(k) for k in deltas} == set(BlockLayout.of_model(model).flux_blocks())  # every slot is hit
    networks, engine = make_handler(tmp_path, model, lbw_presets="MINE:0,1,2,0.5,0.25,3,4,5\nSDXL12:" + "1," * 11 + "1")
    yield pristine, deltas, networks, engine
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def check_blocks(model, pristine, deltas, weight_of):
    """Every patched weight is pristine + weight_of(block) x delta (atol 1e-6)."""
    state = state_snapshot(model)
    for key, delta in deltas.items():
        want = pristine[key] + weight_of(flux_block(key)) * delta
        err = (state[key] - want).abs().max().item()
        assert err < 1e-6, (key, flux_block(key), err)


def run_prompt(networks, model, prompt):
    p = P(model)
    networks.activate(p, parse_prompt(prompt)[1])
    return p


def test_lbw_vector_scales_each_flux_block(model, lbw_setup):
    pristine, deltas, networks, engine = lbw_setup
    slots = BlockLayout.of_model(model).flux_blocks()
    assert slots == ["CLIP", "T5", "IN", "DOUBLE00", "DOUBLE01", "SINGLE00", "SINGLE01", "OUT"]
    values = [round(0.1 * (i + 1), 2) for i in range(len(slots))]
    p = run_prompt(networks, model, f"<lora:every:0.5:lbw={','.join(map(str, values))}>")
    assert p.comments == []
    by_block = dict(zip(slots, values))
    check_blocks(model, pristine, deltas, lambda block: 0.5 * by_block[block])
    p = run_prompt(networks, model, "<lora:every:1:lbw=MINE>")  # a user preset of the Flux length
    assert p.comments == []
    check_blocks(model, pristine, deltas, dict(zip(slots, [0, 1, 2, 0.5, 0.25, 3, 4, 5])).__getitem__)
    for preset, weight in (("ALL0.5", 0.5), ("NONE", 0.0), ("ALL", 1.0)):
        assert run_prompt(networks, model, f"<lora:every:1:lbw={preset}>").comments == []
        check_blocks(model, pristine, deltas, lambda block, w=weight: w)


def test_fluxall_is_bitwise_no_block_weight(model, lbw_setup):
    _, _, networks, _ = lbw_setup
    run_prompt(networks, model, "<lora:every:0.7>")
    plain = state_snapshot(model)
    assert run_prompt(networks, model, "<lora:every:0.7:lbw=FLUXALL>").comments == []
    assert_bitwise_equal(model, plain)


def test_wrong_lbw_length_on_flux_is_refused_with_the_length_the_model_takes(model, lbw_setup):
    pristine, _, networks, engine = lbw_setup
    sixty_one = ",".join(["1"] * 61)
    p = run_prompt(networks, model, f"<lora:every:1:lbw=1,0,1> <lora:every:1:lbw={sixty_one}> "
                                    "<lora:every:1:lbw=SDXL12> <lora:every:1:lbw=INALL>")
    want = "a Flux model takes 8 (CLIP, T5, IN, DOUBLE00-DOUBLE01, SINGLE00-SINGLE01, OUT)"
    assert "<lora:every:1:lbw=1,0,1>: lbw has 3 values; " + want in p.comments
    assert f"<lora:every:1:lbw={sixty_one}>: lbw has 61 values; " + want in p.comments
    assert "<lora:every:1:lbw=SDXL12>: lbw has 12 values; " + want in p.comments
    assert any(c.startswith("<lora:every:1:lbw=INALL>: unknown lbw preset 'INALL' for Flux") for c in p.comments)
    assert engine.active == []
    assert_bitwise_equal(model, pristine)


def test_real_flux_config_takes_lbws_61_values():
    config = flux_model.base_config()["transformer"]
    blocks = BlockLayout("Flux", 2, int(config["num_layers"]), int(config["num_single_layers"]))
    weights = lbw_values(",".join(str(i) for i in range(61)), blocks)
    assert len(weights) == 61
    assert (weights["CLIP"], weights["T5"], weights["IN"], weights["DOUBLE00"], weights["DOUBLE18"],
            weights["SINGLE00"], weights["SINGLE37"], weights["OUT"]) == (0, 1, 2, 3, 21, 22, 59, 60)
    assert set(lbw_values("FLUXALL", blocks).values()) == {1.0}


def test_in_out_scale_double_and_single_blocks_and_mid_is_a_notice(model, lbw_setup):
    pristine, deltas, networks, _ = lbw_setup
    p = run_prompt(networks, model, "<lora:every:1:in=0.5:out=0>")
    assert p.comments == []
    halves = {"DOUBLE": 0.5, "SINGLE": 0.0}
    check_blocks(model, pristine, deltas, lambda block: halves.get(block.rstrip("0123456789"), 1.0))
    p = run_prompt(networks, model, "<lora:every:1:lbw=ALL0.5:in=2:mid=7>")  # combined by multiplication
    assert p.comments == ["<lora:every:1:lbw=ALL0.5:in=2:mid=7>: mid= has no block on a Flux model and is ignored "
                          "(in= scales the double blocks, out= the single blocks)"]
    check_blocks(model, pristine, deltas, lambda block: 1.0 if block.startswith("DOUBLE") else 0.5)
    run_prompt(networks, model, "<lora:every:1>")
    plain = state_snapshot(model)
    assert len(run_prompt(networks, model, "<lora:every:1:mid=0>").comments) == 1
    assert_bitwise_equal(model, plain)  # mid= alone changes nothing


def test_strength_change_with_lbw_touches_only_that_loras_layers(tmp_path, model):
    skip = ("linear1", "linear2", "mod.lin", "modulation.lin", "in_layer", "out_layer", "img_in", "txt_in",
            "final_layer.linear", "adaLN_modulation.1", "mlp.0", "mlp.2")
    kohya_file(tmp_path / "a.safetensors", model, seed=1, skip=skip)  # q, k, v, out of both double blocks
    b_skip = (*(x for x in skip if x != "linear2"), "img_attn.qkv", "txt_attn.qkv", "img_attn.proj", "txt_attn.proj")
    kohya_file(tmp_path / "b.safetensors", model, seed=2, skip=b_skip, text_encoder=True)  # linear2 and CLIP
    pristine = state_snapshot(model)
    engine = make_engine(tmp_path, model)
    blocks = BlockLayout.of_model(model)

    def activate(prompt):
        params = parse_prompt(prompt)[1]["lora"]
        return engine.activate([parse_tag(p).request(blocks) for p in params]).stats

    a_layers = {f"unet.transformer_blocks.{i}.attn.{n}" for i in range(2)
                for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}
    activate("<lora:a:1:lbw=1,1,1,0.5,0.25,1,1,1> <lora:b:1>")
    assert activate("<lora:a:1:lbw=1,1,1,0.5,0.25,1,1,1> <lora:b:1>").layers_touched == 0
    stats = activate("<lora:a:1:lbw=1,1,1,0.5,0.25,1,1,1> <lora:b:0.3>")
    b_layers = {"unet.single_transformer_blocks.0.proj_out", "unet.single_transformer_blocks.1.proj_out"}
    assert b_layers <= set(stats.touched)
    assert all(name in b_layers or name.startswith("text_encoders.0.") for name in stats.touched)
    stats = activate("<lora:a:0.8:lbw=1,1,1,0.5,0.25,1,1,1> <lora:b:0.3>")
    assert set(stats.touched) == a_layers
    stats = activate("<lora:a:0.8:lbw=1,1,1,0.5,0,1,1,1> <lora:b:0.3>")
    assert set(stats.touched) == {n for n in a_layers if n.startswith("unet.transformer_blocks.1.")}
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_chart_rows_are_the_lbw_slots(model):
    index = LayerIndex(model)
    blocks = BlockLayout.of_model(model)
    assert model_blocks(index) == blocks.flux_blocks()  # the chart and the weights name the same blocks
    assert block_label(index.layers["unet.single_transformer_blocks.1.attn.to_k"], blocks) == "SINGLE01"
    assert block_label(index.layers["unet.x_embedder"], blocks) == "IN"
    assert block_label(index.layers["unet.norm_out.linear"], blocks) == "OUT"
    assert block_label(index.layers["text_encoders.1.encoder.block.0.layer.0.SelfAttention.q"], blocks) == "T5"


def test_xyz_block_preset_axis_offers_and_checks_flux_vectors(tmp_path):
    """The X/Y/Z plot's "Lora block preset" axis on a loaded (tiny) Flux: its choices are the Flux presets and the
    user's, and its check refuses a vector of another length before any cell runs."""
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    flux_factory.write_bfl_file(folder / "tiny-flux-bfl.safetensors", seed=2)
    flux_factory.write_companions(tmp_path / "models", seed=2)
    webui = WebUI.create(["--data-dir", str(tmp_path), "--no-embedded-default", "--nowebui"])
    webui.models.load("tiny-flux-bfl.safetensors")
    webui.options.set("lora_lbw_presets", "MINE:1,1,1,0,0,1,1,1\nSD17:" + ",".join(["1"] * 17), save=False)
    name = "scripts_xyz_grid"
    xyz = sys.modules.get(name) or import_script_file(ROOT / "scripts" / "xyz_grid.py", name)
    axis = next(a for a in xyz.axis_options() if a.label == "Lora block preset")
    ctx = xyz.AxisContext(webui)
    assert axis.choices(ctx) == ["NONE", "ALL", "ALL0.5", "FLUXALL", "MINE", "SD17"]
    axis.confirm(ctx, [xyz.LoraValue(None, "FLUXALL"), xyz.LoraValue(None, "MINE"), xyz.LoraValue(None, "0,1,2,3,4,5,6,7")])
    with pytest.raises(ProcessingError, match=r"Lora block preset: lbw has 17 values; a Flux model takes 8 \(CLIP"):
        axis.confirm(ctx, [xyz.LoraValue(None, "ALL"), xyz.LoraValue(None, "SD17")])


def test_flux_loras_are_recognised_as_flux():
    shapes = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [4, 3072], "lora_te1_x.alpha": []}
    assert detect_sd_version({}, shapes) == "Flux"
    assert detect_sd_version({}, {"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": [4, 8]}) == "Flux"
    assert detect_sd_version({}, {"double_blocks.0.processor.qkv_lora1.down.weight": [4, 8]}) == "Flux"
    assert detect_sd_version({"ss_base_model_version": "flux1"}, {}) == "Flux"
    assert detect_sd_version({}, {"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 768]}) == "SDXL"


FLUX_BLOCK_CLASSES = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]  # SimpleTuner's Flux LyCORIS preset


def write_simpletuner_lycoris(path, model, algo, seed):
    """A SimpleTuner-style `lycoris_` Flux file written by the LyCORIS library (`LycorisNetwork` over the
    transformer's blocks, LyCORIS' own key names), and {layer: f(multiplier) -> Expected} from LyCORIS' forward."""
    saved = {name: getattr(LycorisNetwork, name) for name in ("TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME")}
    LycorisNetwork.TARGET_REPLACE_MODULE, LycorisNetwork.TARGET_REPLACE_NAME = FLUX_BLOCK_CLASSES, []
    try:
        kwargs = {"factor": 4} if algo == "lokr" else {}
        network = LycorisNetwork(model.unet, multiplier=1.0, lora_dim=4, alpha=2, network_module=algo,
                                 warn_on_unmatched=False, **kwargs)
    finally:
        for name, value in saved.items():
            setattr(LycorisNetwork, name, value)
    paths = {id(m): f"unet.{name}" for name, m in model.unet.named_modules()}
    generator = torch.Generator().manual_seed(seed)
    state, reference = {}, {}
    for module in network.loras:
        randomize_lycoris_module(module, generator, std=0.05)
        for part, tensor in lycoris_parts(module).items():
            state[f"{module.lora_name}.{part}"] = tensor
        reference[paths[id(module.org_module[0])]] = expected_function(module)
    save_file(state, str(path))
    return state, reference


@pytest.mark.parametrize("algo", ["lora", "loha", "lokr", "full"])
def test_simpletuner_lycoris_files_match_lycoris(tmp_path, model, algo):
    state, reference = write_simpletuner_lycoris(tmp_path / f"st-{algo}.safetensors", model, algo, seed=9)
    assert all(k.startswith("lycoris_") for k in state)
    pristine, ours, _ = apply(tmp_path, model, f"st-{algo}", multiplier=0.7)
    expected = {}
    for layer, f in reference.items():
        want = f(0.7)
        expected[f"{layer}.weight"] = want.weight
        if want.bias is not None:  # full weights carry the bias difference too
            expected[f"{layer}.bias"] = want.bias
    assert len(reference) == 2 * 14 + 2 * 6  # every Linear of the double and single blocks
    assert_close({k: v for k, v in ours.items() if k.startswith("unet.")}, expected,
                 {k: v for k, v in pristine.items() if k.startswith("unet.")})
