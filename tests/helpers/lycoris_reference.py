"""LyCORIS reference harness: real LyCORIS networks, saved as kohya-style files, with the weights LyCORIS
itself computes at inference, to check our strategies and loader against.

The reference is the LyCORIS module's ``forward``: :func:`lycoris_delta` runs it once with its weight op
replaced by a spy that records the weight (and bias) delta the forward adds to the layer's output. That is
exactly what LyCORIS applies at inference, including its DoRA and OFT multiplier rules (its ``merge_to`` is
not used: in lycoris 4.1.3 it applies alpha/rank twice for LoHa and LoKr).

Main entry point: :func:`write_lycoris_file`.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)

UNET_TARGET_MODULES = ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"]
# LyCORIS' own "full" preset also lists the TimestepEmbedding class, which duplicates these names on diffusers
# UNets (its assertion "duplicated lora name" fires), so modules are selected explicitly.
UNET_TARGET_NAMES = ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
TE_TARGET_MODULES = ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"]

ALGOS = {
    "lora": ("lora", {}),
    "locon": ("lora", {}),
    "loha": ("loha", {}),
    "lokr": ("lokr", {}),
    "ia3": ("ia3", {}),
    "glora": ("glora", {}),
    "diag-oft": ("diag-oft", {}),
    "boft": ("boft", {}),
    "full": ("full", {}),
    "dora": ("lora", {"dora_wd": True}),
    "norm": ("lora", {"train_norm": True}),
}


FLOAT32_ONLY = {"DiagOFTModule", "ButterflyOFTModule"}


class Expected(NamedTuple):
    """A layer's new parameters as LyCORIS computes them; ``bias`` is None when the network leaves it alone."""

    weight: torch.Tensor
    bias: torch.Tensor | None


def resolve_algo(algo: str) -> tuple[str, dict[str, Any]]:
    """LyCORIS ``algo`` name and extra network kwargs for a harness algo name.

    Accepts the names in :data:`ALGOS`, ``"tucker"`` (LoCon with Tucker) and ``"<name>-tucker"``.
    """
    extra: dict[str, Any] = {}
    name = algo.lower()
    if name == "tucker":
        name = "lora-tucker"
    if name.endswith("-tucker"):
        name = name[: -len("-tucker")]
        extra["use_tucker"] = True
    if name not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; known: {', '.join(sorted(ALGOS))}, tucker, <algo>-tucker")
    lyco_algo, kwargs = ALGOS[name]
    return lyco_algo, {**kwargs, **extra}


def probe_input(layer: nn.Module) -> torch.Tensor:
    """A small input the layer accepts (only the weights its forward uses matter, not the values)."""
    weight = layer.weight
    if isinstance(layer, nn.Linear):
        return torch.ones(1, layer.in_features, dtype=weight.dtype, device=weight.device)
    if isinstance(layer, nn.Conv2d):
        return torch.ones(1, layer.in_channels, *layer.kernel_size, dtype=weight.dtype, device=weight.device)
    if isinstance(layer, nn.LayerNorm):
        return torch.linspace(-1, 1, weight.numel(), dtype=weight.dtype, device=weight.device).reshape(
            1, *layer.normalized_shape
        )
    if isinstance(layer, nn.GroupNorm):
        count = 4 * layer.num_channels
        return torch.linspace(-1, 1, count, dtype=weight.dtype, device=weight.device).reshape(1, -1, 2, 2)
    raise TypeError(f"no probe input for layer type {type(layer).__name__}")


@torch.no_grad()
def lycoris_delta(lyco_module: nn.Module, multiplier: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight delta, bias delta or None) that ``lyco_module.forward`` adds to its layer at ``multiplier``.

    Every LyCORIS module's weight-rebuild forward ends with ``base + op(x, ΔW, Δb, ...)``; the spy records
    ``ΔW``/``Δb`` from that call.
    """
    captured: dict[str, torch.Tensor | None] = {}
    real_op = lyco_module.op

    def spy(inp, *args, **kwargs):
        captured["weight"] = args[0] if args else kwargs.get("weight")
        captured["bias"] = args[1] if len(args) > 1 else kwargs.get("bias")
        return real_op(inp, *args, **kwargs)

    old_multiplier = lyco_module.multiplier
    lyco_module.op = spy
    lyco_module.multiplier = multiplier
    try:
        lyco_module.forward(probe_input(lyco_module.org_module[0]))
    finally:
        lyco_module.op = real_op
        lyco_module.multiplier = old_multiplier
    if "weight" not in captured:
        raise RuntimeError(f"{type(lyco_module).__name__} forward did not go through its weight op")
    bias = captured["bias"]
    return captured["weight"].detach().clone(), None if bias is None else bias.detach().clone()


@torch.no_grad()
def randomize_lycoris_module(lyco_module: nn.Module, generator: torch.Generator, std: float = 0.2) -> None:
    """Give every parameter random non-zero values (LyCORIS zero-inits up factors).

    ``dora_scale`` gets positive magnitudes near the layer's, ``rescale`` values near 1.
    """
    for name, param in lyco_module.named_parameters():
        noise = torch.randn(param.shape, generator=generator).to(param)
        if name.endswith("dora_scale"):
            param.copy_(param * (1 + 0.2 * noise.abs()) + 0.05)
        elif name.endswith("rescale"):
            param.copy_(1 + 0.1 * noise)
        else:
            param.copy_(noise * std)


def lycoris_parts(lyco_module: nn.Module) -> dict[str, torch.Tensor]:
    """The parts LyCORIS saves for this module (its state dict without the ``lora_name.`` prefix).

    FullModule saves ``weight - org`` only after ``apply_to`` (which rewires the layer); before it, its
    ``weight``/``bias`` parameters *are* the diffs, so they are written as ``diff``/``diff_b`` directly.
    """
    if type(lyco_module).__name__ == "FullModule" and lyco_module.is_diff:
        parts = {"diff": lyco_module.weight}
        if lyco_module.bias is not None:
            parts["diff_b"] = lyco_module.bias
    else:
        parts = dict(lyco_module.state_dict())
    return {name: tensor.detach().cpu().clone().contiguous() for name, tensor in parts.items()}


def reference_copy(lyco_module: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A private copy of the LyCORIS module *and its layer*, in ``dtype``.

    The copy is immune to later patching of the model by the code under test, and float64 makes it a precise
    reference: LyCORIS' own float32 rebuild of e.g. a Tucker LoHa is ~2e-5 off the exact value, while a
    careful float32 computation is ~1e-7 off. LyCORIS' OFT/BOFT cannot run in float64 (their Cayley inverse is
    float32 with float32 identities), so those copies stay float32.
    """
    if type(lyco_module).__name__ in FLOAT32_ONLY:
        dtype = torch.float32
    layer = copy.deepcopy(lyco_module.org_module[0]).to(dtype)
    module = copy.deepcopy(lyco_module).to(dtype)
    module.org_module[0] = layer
    module.org_forward = layer.forward
    for name in ("_org_weight", "org_bias"):  # FullModule caches the original parameters in plain lists
        cached = getattr(module, name, None)
        if isinstance(cached, list):
            setattr(module, name, [t.to(dtype) for t in cached])
    return module


def expected_function(lyco_module: nn.Module) -> Callable[[float], Expected]:
    """``f(multiplier) -> Expected`` for one LyCORIS module, computed on a float64 :func:`reference_copy` and
    returned in the layer's dtype."""
    dtype = lyco_module.org_module[0].weight.dtype
    reference = reference_copy(lyco_module)
    layer = reference.org_module[0]

    def expected(multiplier: float) -> Expected:
        delta_w, delta_b = lycoris_delta(reference, multiplier)
        weight = layer.weight.detach() + delta_w.reshape(layer.weight.shape).to(layer.weight)
        bias = None
        if delta_b is not None:
            base = layer.bias.detach() if layer.bias is not None else torch.zeros_like(delta_b)
            bias = (base + delta_b.to(base)).to(dtype)
        return Expected(weight.to(dtype), bias)

    expected.lora_name = lyco_module.lora_name  # the network key in the file, for diagnostics
    return expected


def _kohya_view(text_encoder: nn.Module) -> nn.Module:
    """The module tree kohya names TE layers from: it must contain ``text_model.`` (transformers 5's
    ``CLIPTextModel`` has no such level; ``CLIPTextModelWithProjection`` has)."""
    if any(name.startswith("text_model.") for name, _ in text_encoder.named_modules()):
        return text_encoder
    holder = nn.Module()
    holder.text_model = text_encoder
    return holder


class _PresetScope:
    """Applies a LyCORIS kohya preset and restores the class attributes it mutates afterwards."""

    ATTRS = (
        "ENABLE_CONV",
        "UNET_TARGET_REPLACE_MODULE",
        "UNET_TARGET_REPLACE_NAME",
        "TEXT_ENCODER_TARGET_REPLACE_MODULE",
        "TEXT_ENCODER_TARGET_REPLACE_NAME",
        "MODULE_ALGO_MAP",
        "NAME_ALGO_MAP",
        "USE_FNMATCH",
        "TARGET_EXCLUDE_NAME",
    )

    def __init__(self, cls, preset: dict[str, Any]):
        self.cls, self.preset = cls, preset

    def __enter__(self):
        self.saved = {name: getattr(self.cls, name) for name in self.ATTRS}
        self.cls.apply_preset(self.preset)
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            setattr(self.cls, name, value)


# create_network()-style argument names -> LycorisNetworkKohya / module keyword names.
KWARG_RENAMES = {"dora_wd": "weight_decompose", "wd_on_output": "wd_on_out", "use_cp": "use_tucker"}


def create_kohya_network(algo: str, unet: nn.Module, text_encoders: list[nn.Module], **algo_kwargs):
    """A ``lycoris.kohya.LycorisNetworkKohya`` over the models (SD1: one TE -> ``lora_te_``; SDXL: two ->
    ``lora_te1_``/``lora_te2_``), modules selected explicitly (no named preset).

    ``network_dim``/``network_alpha`` (default 4/2), ``conv_dim``/``conv_alpha`` (default: the same),
    ``use_tucker``, ``train_norm`` and every module kwarg (``dora_wd``/``weight_decompose``,
    ``wd_on_output``/``wd_on_out``, ``factor``, ``decompose_both``, ``full_matrix``, ``constraint``,
    ``rescaled``, ``train_on_input``, ...) pass through. (``lycoris.kohya.create_network`` would silently drop
    module kwargs it does not know, such as ``train_on_input``, and re-apply a named preset.)
    """
    from lycoris import kohya  # noqa: PLC0415  (heavy import, only for tests)

    lyco_algo, extra = resolve_algo(algo)
    kwargs = {KWARG_RENAMES.get(k, k): v for k, v in {**extra, **algo_kwargs}.items()}
    dim = kwargs.pop("network_dim", 4)
    alpha = kwargs.pop("network_alpha", 2)
    preset = {
        "enable_conv": True,
        "unet_target_module": UNET_TARGET_MODULES,
        "unet_target_name": UNET_TARGET_NAMES,
        "text_encoder_target_module": TE_TARGET_MODULES,
        "text_encoder_target_name": [],
        "module_algo_map": {},
        "name_algo_map": {},
        "use_fnmatch": False,
        "exclude_name": [],
    }
    te_views = [_kohya_view(te) for te in text_encoders]
    te_arg: Any = te_views if len(te_views) > 1 else (te_views[0] if te_views else None)
    with _PresetScope(kohya.LycorisNetworkKohya, preset):
        return kohya.LycorisNetworkKohya(
            te_arg,
            unet,
            multiplier=1.0,
            lora_dim=dim,
            conv_lora_dim=kwargs.pop("conv_dim", dim),
            alpha=alpha,
            conv_alpha=kwargs.pop("conv_alpha", alpha),
            use_tucker=kwargs.pop("use_tucker", False),
            network_module=lyco_algo,
            train_norm=kwargs.pop("train_norm", False),
            warn_on_unmatched=False,
            **kwargs,
        )


def write_lycoris_file(
    path: str | Path,
    algo: str,
    unet: nn.Module,
    text_encoders: list[nn.Module],
    seed: int = 0,
    **algo_kwargs,
) -> dict[str, Callable[[float], Expected]]:
    """Create a real LyCORIS network on ``unet`` and ``text_encoders``, randomise all its parameters with a
    generator seeded by ``seed``, save it (safetensors, kohya key names such as
    ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight`` and
    ``lora_te_text_model_encoder_layers_0_self_attn_q_proj...``) to ``path``, and return the reference:
    ``{"unet.<module path>" | "text_encoders.<i>.<module path>": f(multiplier) -> Expected(weight, bias)}``,
    the layer's new parameters as LyCORIS computes them at inference from the models' weights at call time
    of this function (later changes to the models do not affect the reference). Each function also carries
    ``.lora_name``, the network key of its module in the file.

    ``algo``: lora/locon, loha, lokr, ia3, glora, diag-oft, boft, full, dora, norm (LoRA + norm layers),
    tucker / <algo>-tucker; ``algo_kwargs`` go to LyCORIS (see :func:`create_kohya_network`).
    """
    network = create_kohya_network(algo, unet, text_encoders, **algo_kwargs)
    generator = torch.Generator().manual_seed(seed)
    paths: dict[int, str] = {id(m): f"unet.{name}" for name, m in unet.named_modules()}
    for index, te in enumerate(text_encoders):
        paths.update({id(m): f"text_encoders.{index}.{name}" for name, m in te.named_modules()})

    state: dict[str, torch.Tensor] = {}
    reference: dict[str, Callable[[float], Expected]] = {}
    for lyco_module in network.loras:
        layer_path = paths.get(id(lyco_module.org_module[0]))
        if layer_path is None:
            raise RuntimeError(f"LyCORIS module {lyco_module.lora_name} targets a layer outside the given models")
        randomize_lycoris_module(lyco_module, generator)
        for part, tensor in lycoris_parts(lyco_module).items():
            state[f"{lyco_module.lora_name}.{part}"] = tensor
        reference[layer_path] = expected_function(lyco_module)
    if not state:
        raise RuntimeError(f"LyCORIS created no modules for algo {algo!r}")
    metadata = {
        "ss_network_module": "lycoris.kohya",
        "ss_network_dim": str(network.lora_dim),
        "ss_network_alpha": str(network.alpha),
        "ss_network_args": json.dumps({"algo": resolve_algo(algo)[0], **{k: str(v) for k, v in algo_kwargs.items()}}),
    }
    save_file(state, str(path), metadata)
    logger.info("wrote %s: %d LyCORIS modules, %d tensors", path, len(reference), len(state))
    return reference
