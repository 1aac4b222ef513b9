"""Network strategies against the LyCORIS library: every algorithm and variant, built on small real layers with
randomised LyCORIS parameters, must reproduce LyCORIS' own inference forward to 1e-5 (float32); plus key
recognition, validation errors and the LyCORIS reference harness itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lycoris.modules.boft import ButterflyOFTModule
from lycoris.modules.diag_oft import DiagOFTModule
from lycoris.modules.full import FullModule
from lycoris.modules.glora import GLoRAModule
from lycoris.modules.ia3 import IA3Module
from lycoris.modules.locon import LoConModule
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule
from lycoris.modules.norms import NormModule
from safetensors.torch import load_file
from torch import nn

from lorakit.algorithms import registry as strategies
from lorakit.algorithms import tensor_math as lyco_helpers
from lorakit.algorithms.base import Delta
from tests.helpers.lycoris_reference import (
    lycoris_delta,
    lycoris_parts,
    probe_input,
    randomize_lycoris_module,
    reference_copy,
    write_lycoris_file,
)

TOL = 1e-5
MULTIPLIERS = (1.0, 0.7)
KEY = "lora_unet_down_blocks_0_attentions_0_proj_in"


# ------------------------------------------------------------------------------------------------ helpers
def make_layer(kind: str, seed: int = 0) -> nn.Module:
    """Small real layers with seeded random weights and biases."""
    torch.manual_seed(seed)
    layers = {
        "linear": lambda: nn.Linear(48, 64),
        "linear_nobias": lambda: nn.Linear(48, 64, bias=False),
        "conv3": lambda: nn.Conv2d(16, 32, 3, padding=1),
        "conv1": lambda: nn.Conv2d(16, 32, 1),
        "groupnorm": lambda: nn.GroupNorm(4, 16),
        "layernorm": lambda: nn.LayerNorm(24),
    }
    layer = layers[kind]()
    with torch.no_grad():
        for param in layer.parameters():
            param.copy_(torch.randn(param.shape) * 0.5)
    return layer.eval()


def lyco_module(cls, layer: nn.Module, seed: int = 1, **kwargs) -> nn.Module:
    """A LyCORIS module on ``layer`` with every parameter randomised."""
    module = cls("lycoris_test", layer, multiplier=1.0, **kwargs)
    randomize_lycoris_module(module, torch.Generator().manual_seed(seed), std=0.5)
    return module


def rel_err(got: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor) -> float:
    return ((got - ref).norm() / scale.norm().clamp_min(1e-12)).item()


def layer_forward(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``layer``'s own op with replaced parameters."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.LayerNorm):
        return F.layer_norm(x, layer.normalized_shape, weight, bias, layer.eps)
    return F.group_norm(x, layer.num_groups, weight, bias, layer.eps)


def apply_delta(layer: nn.Module, delta: Delta) -> tuple[torch.Tensor, torch.Tensor | None]:
    weight = layer.weight.detach() + delta.weight
    bias = layer.bias.detach() if layer.bias is not None else None
    if delta.bias is not None:
        bias = delta.bias if bias is None else bias + delta.bias
    return weight, bias


def assert_matches_lycoris(module, layer: nn.Module, parts=None, key: str = KEY, multipliers=MULTIPLIERS, **kw):
    """Our module from the LyCORIS module's saved parts reproduces LyCORIS' forward: the weight/bias deltas of a
    float64 copy of the LyCORIS module (relative to the delta), and its float32 output (relative to the output)."""
    ours = strategies.create_module(key, parts if parts is not None else lycoris_parts(module))
    ours.validate(layer.weight.shape)
    precise = reference_copy(module)
    x = probe_input(layer) * torch.linspace(-1, 1, probe_input(layer).numel()).reshape(probe_input(layer).shape)
    base_out = layer(x)
    for multiplier in multipliers:
        ref_w, ref_b = (t if t is None else t.float() for t in lycoris_delta(precise, multiplier))
        module.multiplier = multiplier
        with torch.no_grad():
            ref_out = module.forward(x)
        delta = ours.calc_delta(layer.weight.detach(), multiplier, bias=layer.bias, **kw)
        assert delta.weight.shape == layer.weight.shape
        assert rel_err(delta.weight, ref_w.reshape(layer.weight.shape), ref_w) <= TOL, multiplier
        if ref_b is not None:
            assert delta.bias is not None and rel_err(delta.bias, ref_b, ref_b) <= TOL
        weight, bias = apply_delta(layer, delta)
        with torch.no_grad():
            got_out = layer_forward(layer, x, weight, bias)
        assert rel_err(got_out, ref_out, ref_out) <= TOL, multiplier
        assert (ref_out - base_out).norm() > 1e-3 * ref_out.norm() or multiplier == 0
        assert ref_w.norm() > 1e-3  # the case really changes the layer
    return ours


# ------------------------------------------------------------------------------------------------ LoRA
@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("linear", {}),
        ("conv3", {}),
        ("conv1", {}),
        ("conv3", {"use_tucker": True}),
        ("linear", {"weight_decompose": True}),
        ("linear", {"weight_decompose": True, "wd_on_out": False}),
        ("conv3", {"weight_decompose": True}),
        ("conv3", {"weight_decompose": True, "wd_on_out": False}),
    ],
)
def test_lora_matches_lycoris(kind, kwargs):
    layer = make_layer(kind)
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=2.0, **kwargs)
    ours = assert_matches_lycoris(module, layer)
    assert ours.algorithm == "LoRA" and ours.rank == 4 and ours.alpha == 2.0
    assert ours.is_dora == bool(kwargs.get("weight_decompose"))


def test_lora_fast_path_equals_delta():
    layer = make_layer("conv3")
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=3.0)
    ours = strategies.create_module(KEY, lycoris_parts(module))
    up, down = ours.low_rank(0.7)
    assert up.shape == (32, 4) and down.shape == (4, 16 * 9)
    delta = ours.calc_delta(layer.weight.detach(), 0.7).weight
    assert rel_err((up @ down).reshape(delta.shape), delta, delta) <= TOL
    up2, down2 = ours.low_rank(0.7, dyn_dim=2)
    assert rel_err(up2 @ down2, ours.calc_delta(layer.weight, 0.7, dyn_dim=2).weight.flatten(1), up2 @ down2) <= TOL
    tucker = strategies.create_module(KEY, lycoris_parts(lyco_module(LoConModule, layer, lora_dim=4, use_tucker=True)))
    assert tucker.low_rank(1.0) is None
    dora = strategies.create_module(KEY, lycoris_parts(lyco_module(LoConModule, layer, weight_decompose=True)))
    assert dora.low_rank(1.0) is None


def test_lora_dyn_dim_equals_lycoris_module_of_cut_rank():
    """dyn=d keeps the first d ranks and the full-rank scale alpha/r (A1111): equal to a LyCORIS module of rank d
    holding the cut factors with alpha' = alpha·d/r."""
    layer = make_layer("linear")
    full = lyco_module(LoConModule, layer, lora_dim=6, alpha=3.0)
    parts = lycoris_parts(full)
    cut = LoConModule("cut", layer, multiplier=1.0, lora_dim=2, alpha=3.0 * 2 / 6)
    with torch.no_grad():
        cut.lora_up.weight.copy_(parts["lora_up.weight"][:, :2])
        cut.lora_down.weight.copy_(parts["lora_down.weight"][:2])
    assert_matches_lycoris(cut, layer, parts=parts, dyn_dim=2)


def test_peft_lora_parts_and_injected_alpha():
    layer = make_layer("linear")
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=8.0)
    parts = lycoris_parts(module)
    peft = {
        "lora_B.weight": parts["lora_up.weight"],
        "lora_A.weight": parts["lora_down.weight"],
        "alpha": parts["alpha"],
    }
    ours = assert_matches_lycoris(module, layer, parts=peft, key="unet.down_blocks.0.attentions.0.proj_in")
    assert set(ours.weights) == {"lora_up.weight", "lora_down.weight", "alpha"}
    no_alpha = strategies.create_module(KEY, {k: v for k, v in peft.items() if k != "alpha"})
    assert no_alpha.scale == 1.0  # PEFT without injected alpha: no scaling


def test_legacy_bias_offset_dense_and_sparse():
    """The ``bias`` part is added to the raw delta before alpha/rank (A1111 finalize_updown)."""
    layer = make_layer("linear")
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=2.0)
    parts = lycoris_parts(module)
    offset = torch.zeros(64, 48)
    offset[3, 5], offset[10, 40] = 0.5, -1.25
    ref_w, _ = lycoris_delta(module, 0.7)
    expected = ref_w + 0.7 * (2.0 / 4) * offset
    dense = strategies.create_module(KEY, {**parts, "bias": offset})
    assert rel_err(dense.calc_delta(layer.weight, 0.7).weight, expected, expected) <= TOL
    sparse_parts = {
        "bias_indices": torch.tensor([[3, 10], [5, 40]], dtype=torch.int16),
        "bias_values": torch.tensor([0.5, -1.25], dtype=torch.float16),
        "bias_size": torch.tensor([64, 48], dtype=torch.int16),
    }
    sparse = strategies.create_module(KEY, {**parts, **sparse_parts})
    assert rel_err(sparse.calc_delta(layer.weight, 0.7).weight, expected, expected) <= TOL
    assert dense.low_rank(1.0) is None


# ------------------------------------------------------------------------------------------------ LoHa
@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("linear", {}),
        ("conv3", {}),
        ("conv3", {"use_tucker": True}),
        ("linear", {"weight_decompose": True}),
        ("conv3", {"weight_decompose": True, "wd_on_out": False}),
    ],
)
def test_loha_matches_lycoris(kind, kwargs):
    layer = make_layer(kind)
    module = lyco_module(LohaModule, layer, lora_dim=4, alpha=2.0, **kwargs)
    ours = assert_matches_lycoris(module, layer)
    assert ours.algorithm == "LoHa" and ours.rank == 4 and ours.low_rank(1.0) is None


# ------------------------------------------------------------------------------------------------ LoKr
@pytest.mark.parametrize(
    "kind, kwargs, expected_parts",
    [
        ("linear", {"lora_dim": 2}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
        ("linear", {"lora_dim": 2, "decompose_both": True}, {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"}),
        ("linear", {"lora_dim": 2, "full_matrix": True}, {"lokr_w1", "lokr_w2"}),
        ("linear", {"lora_dim": 2, "factor": 4}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
        ("conv3", {"lora_dim": 2}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
        ("conv3", {"lora_dim": 2, "use_tucker": True}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}),
        ("conv3", {"lora_dim": 2, "full_matrix": True}, {"lokr_w1", "lokr_w2"}),
        ("linear", {"lora_dim": 2, "weight_decompose": True}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "dora_scale"}),
        ("conv3", {"lora_dim": 2, "weight_decompose": True, "wd_on_out": False}, {"lokr_w1", "lokr_w2_a", "lokr_w2_b"}),
    ],
)
def test_lokr_matches_lycoris(kind, kwargs, expected_parts):
    layer = make_layer(kind)
    module = lyco_module(LokrModule, layer, alpha=3.0, **kwargs)
    parts = lycoris_parts(module)
    assert expected_parts <= set(parts)
    ours = assert_matches_lycoris(module, layer, parts=parts)
    if kwargs.get("full_matrix"):
        assert ours.scale == 1.0  # alpha ignored for full-matrix factors
    else:
        assert ours.scale == pytest.approx(3.0 / 2)


# ------------------------------------------------------------------------------------------------ IA3
@pytest.mark.parametrize("kind", ["linear", "conv3"])
@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_matches_lycoris(kind, on_input):
    layer = make_layer(kind)
    module = lyco_module(IA3Module, layer, train_on_input=on_input)
    ours = assert_matches_lycoris(module, layer)
    assert ours.on_input is on_input and ours.algorithm == "IA3"
    with pytest.raises(ValueError, match="IA3 weight shape"):
        ours.validate(torch.Size((7, 5)))


# ------------------------------------------------------------------------------------------------ GLoRA
@pytest.mark.parametrize("kind", ["linear", "conv3"])
def test_glora_matches_lycoris(kind):
    layer = make_layer(kind)
    module = lyco_module(GLoRAModule, layer, lora_dim=4, alpha=2.0)
    ours = assert_matches_lycoris(module, layer)
    assert not ours.old_layout and ours.scale == pytest.approx(0.5)  # LyCORIS scales by alpha/r (A1111 does not)


def test_glora_old_layout_is_recognised():
    """Older files store the transposed layout (A1111's formula b2·b1 + W·a2·a1): same result."""
    for kind in ("linear", "linear_nobias"):
        layer = make_layer(kind)
        layer_sq = nn.Linear(48, 48)
        for target in (layer, layer_sq):
            module = lyco_module(GLoRAModule, target, lora_dim=4, alpha=2.0)
            parts = lycoris_parts(module)
            old = {"a1.weight": parts["a2.weight"], "a2.weight": parts["a1.weight"], "b1.weight": parts["b2.weight"]}
            old.update({"b2.weight": parts["b1.weight"], "alpha": parts["alpha"]})
            ours = assert_matches_lycoris(module, target, parts=old)
            assert ours.old_layout and ours.rank == 4


# ------------------------------------------------------------------------------------------------ OFT / BOFT
@pytest.mark.parametrize(
    "kind, kwargs",
    [
        ("linear", {}),
        ("linear", {"constraint": 1e-3}),
        ("linear", {"constraint": 1e-3, "rescaled": True}),
        ("linear", {"rescaled": True}),
        ("conv3", {"constraint": 1e-2, "rescaled": True}),
    ],
)
def test_diag_oft_matches_lycoris(kind, kwargs):
    layer = make_layer(kind)
    module = lyco_module(DiagOFTModule, layer, lora_dim=8, **kwargs)
    ours = assert_matches_lycoris(module, layer)
    assert ours.algorithm == "OFT" and ours.num_blocks * ours.block_size == layer.weight.shape[0]


def test_kohya_oft_and_old_oft_diag():
    layer = make_layer("linear")
    module = lyco_module(DiagOFTModule, layer, lora_dim=8, constraint=2e-3)
    parts = lycoris_parts(module)
    # kohya OFT: oft_unet_ prefix, same oft_blocks + alpha (constraint = alpha * out).
    kohya = assert_matches_lycoris(module, layer, parts=parts, key="oft_unet_down_blocks_0_attentions_0_proj_in")
    assert kohya.constraint_factor == pytest.approx(2e-3)
    # old LyCORIS saved R itself as oft_diag.
    with torch.no_grad():
        r = module.get_r()
    old = assert_matches_lycoris(module, layer, parts={"oft_diag": r})
    assert old.is_r


@pytest.mark.parametrize(
    "kind, kwargs",
    [("linear", {}), ("linear", {"constraint": 1e-3, "rescaled": True}), ("conv3", {"rescaled": True})],
)
def test_boft_matches_lycoris(kind, kwargs):
    layer = make_layer(kind)
    module = lyco_module(ButterflyOFTModule, layer, lora_dim=4, **kwargs)
    parts = lycoris_parts(module)
    assert parts["oft_blocks"].dim() == 4 and parts["oft_blocks"].shape[0] > 1  # several butterfly stages
    ours = assert_matches_lycoris(module, layer, parts=parts)
    assert ours.algorithm == "BOFT"


# ------------------------------------------------------------------------------------------------ Full / Norm
@pytest.mark.parametrize("kind", ["linear", "conv3", "linear_nobias"])
def test_full_matches_lycoris(kind):
    layer = make_layer(kind)
    module = lyco_module(FullModule, layer)
    parts = lycoris_parts(module)
    assert ("diff_b" in parts) == (layer.bias is not None)
    ours = assert_matches_lycoris(module, layer, parts=parts)
    assert ours.algorithm == "Full"


@pytest.mark.parametrize("kind", ["groupnorm", "layernorm"])
def test_norm_matches_lycoris(kind):
    layer = make_layer(kind)
    module = lyco_module(NormModule, layer)
    ours = assert_matches_lycoris(module, layer)
    assert ours.algorithm == "Norm"


# ------------------------------------------------------------------------------------------------ DoRA rule
def test_dora_multiplier_interpolates_scale_like_lycoris():
    """LyCORIS keeps ΔW at multiplier 0 (it interpolates the magnitude scale); we follow it."""
    layer = make_layer("linear")
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=2.0, weight_decompose=True)
    ours = assert_matches_lycoris(module, layer, multipliers=(0.0, 1.5))
    plain = ours.diff_weight(layer.weight)
    assert rel_err(ours.calc_delta(layer.weight, 0.0).weight, plain, plain) <= TOL
    merged = layer.weight + ours.calc_delta(layer.weight, 1.0).weight
    norms = merged.norm(dim=1, keepdim=True)
    assert rel_err(norms, ours.weights["dora_scale"], norms) <= 1e-4  # rows re-normalised to the magnitude


def test_dora_axis_detection():
    assert lyco_helpers.dora_on_output("k", torch.Size((64, 1)), torch.Size((64, 48)))
    assert not lyco_helpers.dora_on_output("k", torch.Size((1, 48)), torch.Size((64, 48)))
    assert lyco_helpers.dora_on_output("k", torch.Size((32, 1, 1, 1)), torch.Size((32, 16, 3, 3)))
    assert not lyco_helpers.dora_on_output("k", torch.Size((1, 16, 1, 1)), torch.Size((32, 16, 3, 3)))
    with pytest.raises(ValueError, match="dora_scale shape"):
        lyco_helpers.dora_on_output("k", torch.Size((48, 1)), torch.Size((64, 48)))


# ------------------------------------------------------------------------------------------------ registry, errors
def test_registry_order_and_claims():
    names = [t.algorithm for t in strategies.MODULE_TYPES]
    assert names == ["LoRA", "LoHa", "IA3", "LoKr", "Full", "Norm", "GLoRA", "OFT", "BOFT", "Set"]
    boft = strategies.create_module(KEY, {"oft_blocks": torch.zeros(2, 4, 4, 4)})
    oft = strategies.create_module(KEY, {"oft_blocks": torch.zeros(4, 8, 8)})
    assert (boft.algorithm, oft.algorithm) == ("BOFT", "OFT")


def test_unsupported_group_names_key_and_parts():
    with pytest.raises(strategies.UnsupportedKeysError, match=r"lora_unet_x.*q_layer\.weight") as info:
        strategies.create_module("lora_unet_x", {"q_layer.weight": torch.zeros(2, 2), "alpha": torch.tensor(1.0)})
    assert isinstance(info.value, ValueError)


def test_malformed_groups_raise_clear_errors():
    up, down = torch.randn(64, 4), torch.randn(3, 48)
    with pytest.raises(ValueError, match=f"{KEY}.*rank mismatch"):
        strategies.create_module(KEY, {"lora_up.weight": up, "lora_down.weight": down})
    bad = torch.randn(64, 4)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=f"{KEY}.*'lora_up.weight'.*NaN"):
        strategies.create_module(KEY, {"lora_up.weight": bad, "lora_down.weight": torch.randn(4, 48)})
    inf_alpha = {"lora_up.weight": up, "lora_down.weight": torch.randn(4, 48), "alpha": torch.tensor(math.inf)}
    with pytest.raises(ValueError, match="'alpha'.*Inf"):
        strategies.create_module(KEY, inf_alpha)
    lora = strategies.create_module(KEY, {"lora_up.weight": up, "lora_down.weight": torch.randn(4, 48)})
    with pytest.raises(ValueError, match=r"shape \(64, 32\)"):
        lora.validate(torch.Size((64, 32)))
    with pytest.raises(ValueError, match="shape"):
        lora.calc_delta(torch.zeros(32, 48), 1.0)
    with pytest.raises(ValueError, match="LoHa rank mismatch"):
        strategies.create_module(
            KEY, {"hada_w1_a": up, "hada_w1_b": torch.randn(3, 48), "hada_w2_a": up, "hada_w2_b": torch.randn(4, 48)}
        )
    with pytest.raises(ValueError, match="OFT blocks"):
        strategies.create_module(KEY, {"oft_blocks": torch.zeros(4, 8, 8)}).validate(torch.Size((30, 8)))
    with pytest.raises(ValueError, match="does not support a dora_scale"):
        strategies.create_module(KEY, {"diff": torch.zeros(4, 4), "dora_scale": torch.ones(4, 1)})


def test_bf16_parts_compute_in_float32_and_leave_inputs_alone():
    layer = make_layer("linear")
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=2.0, weight_decompose=True)
    parts = {k: v.to(torch.bfloat16) for k, v in lycoris_parts(module).items()}
    ours = strategies.create_module(KEY, parts)
    weight = layer.weight.detach().to(torch.bfloat16)
    before = weight.clone()
    delta = ours.calc_delta(weight, 0.7)
    assert delta.weight.dtype == torch.float32 and delta.weight.device == weight.device
    assert torch.equal(weight, before)


# ------------------------------------------------------------------------------------------------ harness
def tiny_models(two_text_encoders: bool = False):
    from diffusers import UNet2DConditionModel  # noqa: PLC0415 - imported where it is needed
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: PLC0415 - imported where it is needed

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    config = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=1000)
    tes = [CLIPTextModel(CLIPTextConfig(**config)).eval()]
    if two_text_encoders:
        tes.append(CLIPTextModelWithProjection(CLIPTextConfig(**config, projection_dim=32)).eval())
    return unet, tes


@pytest.fixture(scope="module")
def sd1_models():
    """One tiny SD1-like UNet + CLIP text encoder shared by the harness tests (the harness never modifies them)."""
    return tiny_models()


def groups_of(path) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path)).items():
        network_key, part = key.split(".", 1)
        groups.setdefault(network_key, {})[part] = tensor
    return groups


def check_file_against_reference(path, reference, unet, tes, multipliers=(0.7,)) -> int:
    """Every group in the file is recognised and valid for its layer; one layer per distinct (type, weight shape)
    is compared with the reference (all layers would only repeat the same shapes, slowly on a shared CPU)."""
    groups = groups_of(path)
    assert {fn.lora_name for fn in reference.values()} == set(groups)
    models = {"unet": unet, **{f"text_encoders.{i}": te for i, te in enumerate(tes)}}
    checked, seen = 0, set()
    for target, expected in sorted(reference.items()):
        root = "unet" if target.startswith("unet.") else ".".join(target.split(".")[:2])
        layer = models[root].get_submodule(target[len(root) + 1 :])
        module = strategies.create_module(expected.lora_name, groups[expected.lora_name])
        module.validate(layer.weight.shape)
        signature = (type(layer).__name__, tuple(layer.weight.shape), layer.bias is not None)
        if signature in seen:
            continue
        seen.add(signature)
        module = strategies.create_module(expected.lora_name, groups[expected.lora_name])
        for multiplier in multipliers:
            want = expected(multiplier)
            delta = module.calc_delta(layer.weight.detach(), multiplier, bias=layer.bias)
            weight, bias = apply_delta(layer, delta)
            assert rel_err(weight, want.weight, want.weight - layer.weight) <= TOL, (target, multiplier)
            if want.bias is not None:
                assert rel_err(bias, want.bias, want.bias - layer.bias) <= TOL, (target, multiplier)
        checked += 1
    return checked


@pytest.mark.parametrize(
    "algo, kwargs",
    [
        ("lora", {}),
        ("loha", {}),
        ("lokr", {"network_dim": 2, "factor": 4}),
        ("dora", {"wd_on_output": False}),
        ("lokr-tucker", {"network_dim": 2, "factor": 4}),
        ("ia3", {"train_on_input": True}),
        ("glora", {}),
        ("diag-oft", {"constraint": 1e-3, "rescaled": True}),
        ("boft", {}),
        ("full", {}),
        ("norm", {}),
    ],
)
def test_harness_writes_kohya_files_matching_lycoris(tmp_path, sd1_models, algo, kwargs):
    unet, tes = sd1_models
    path = tmp_path / f"{algo}.safetensors"
    reference = write_lycoris_file(path, algo, unet, tes, seed=3, **kwargs)
    keys = set(groups_of(path))
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in keys
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in keys
    assert "text_encoders.0.encoder.layers.0.self_attn.q_proj" in reference  # real transformers-5 module path
    assert "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in reference
    if algo not in ("norm",):
        assert "unet.down_blocks.0.resnets.0.conv1" in reference and "unet.conv_in" in reference
    if algo == "norm":
        assert "unet.down_blocks.0.resnets.0.norm1" in reference
    assert check_file_against_reference(path, reference, unet, tes) >= 10


def test_harness_sdxl_prefixes_and_isolated_reference(tmp_path):
    unet, tes = tiny_models(two_text_encoders=True)
    path = tmp_path / "sdxl.safetensors"
    reference = write_lycoris_file(path, "lora", unet, tes, seed=5)
    keys = set(groups_of(path))
    assert "lora_te1_text_model_encoder_layers_0_mlp_fc1" in keys
    assert "lora_te2_text_model_encoder_layers_0_mlp_fc1" in keys
    assert "text_encoders.1.text_model.encoder.layers.0.mlp.fc1" in reference
    assert check_file_against_reference(path, reference, unet, tes, multipliers=(1.0, 0.7)) >= 10
    target = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    before = reference[target](1.0).weight.clone()
    with torch.no_grad():  # the code under test patching the model must not move the reference
        unet.get_submodule(target[5:]).weight.add_(1.0)
    assert torch.equal(reference[target](1.0).weight, before)


def test_glora_tucker_bm_matches_lycoris_function():
    """LyCORIS never builds GLoRA's Tucker ``bm`` (its use_tucker test contradicts itself), but its function
    ``_glora_weight`` defines the math; our module matches it."""
    from lycoris.modules.glora import _glora_weight  # noqa: PLC0415 - imported where it is needed

    layer = make_layer("conv3")
    g = torch.Generator().manual_seed(7)
    a1, a2 = torch.randn(16, 4, 1, 1, generator=g), torch.randn(4, 16, 1, 1, generator=g)
    b1, b2, bm = (
        torch.randn(32, 4, 1, 1, generator=g),
        torch.randn(4, 16, 1, 1, generator=g),
        torch.randn(4, 4, 3, 3, generator=g),
    )
    parts = {
        "a1.weight": a1,
        "a2.weight": a2,
        "b1.weight": b1,
        "b2.weight": b2,
        "bm.weight": bm,
        "alpha": torch.tensor(2.0),
    }
    ours = strategies.create_module(KEY, parts)
    weight = layer.weight.detach()
    expected = _glora_weight(weight.double(), a1.double(), a2.double(), b1.double(), b2.double(), bm.double(), 0.5)
    got = ours.calc_delta(weight, 0.7).weight
    assert rel_err(got.double(), 0.7 * expected, expected) <= TOL


def test_peft_dora_magnitude_vector_is_per_output_dora():
    layer = make_layer("linear")
    module = lyco_module(LoConModule, layer, lora_dim=4, alpha=4.0, weight_decompose=True)
    parts = lycoris_parts(module)
    peft = {
        "lora_A.weight": parts["lora_down.weight"],
        "lora_B.weight": parts["lora_up.weight"],
        "lora_magnitude_vector": parts["dora_scale"].reshape(-1),
        "alpha": parts["alpha"],
    }
    ours = assert_matches_lycoris(module, layer, parts=peft, multipliers=(1.0,))
    assert ours.is_dora


def test_malformed_sparse_bias_names_key():
    parts = {"lora_up.weight": torch.randn(8, 2), "lora_down.weight": torch.randn(2, 4)}
    sparse = {
        "bias_indices": torch.tensor([[9], [0]]),
        "bias_values": torch.tensor([1.0]),
        "bias_size": torch.tensor([8, 4]),
    }
    with pytest.raises(ValueError, match=f"{KEY}: malformed sparse bias"):
        strategies.create_module(KEY, {**parts, **sparse})
    with pytest.raises(ValueError, match="together"):
        strategies.create_module(KEY, {**parts, "bias_values": torch.tensor([1.0])})


def test_lokr_t1_tucker_first_half():
    """``lokr_t1`` (ComfyUI reads it; LyCORIS never writes it) rebuilds w1 like t2 rebuilds w2."""
    g = torch.Generator().manual_seed(3)
    t1, w1a, w1b = torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    w2 = torch.randn(8, 4, 1, 1, generator=g)
    parts = {"lokr_t1": t1, "lokr_w1_a": w1a, "lokr_w1_b": w1b, "lokr_w2": w2, "alpha": torch.tensor(1.0)}
    ours = strategies.create_module(KEY, parts)
    w1 = torch.einsum("i j h w, i p, j r -> p r h w", t1, w1a, w1b)
    expected = 0.5 * torch.kron(w1.contiguous(), w2)
    got = ours.calc_delta(torch.zeros(32, 16, 3, 3), 1.0).weight
    assert rel_err(got, expected, expected) <= TOL
