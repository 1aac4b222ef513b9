"""Model configurations shipped with the repository, and configurations inferred from a checkpoint's tensors.

A *family config* is a plain dict (the JSON files next to this module):

    {"family": "SD1"|"SD2"|"SDXL",
     "unet": diffusers UNet2DConditionModel config, "vae": diffusers AutoencoderKL config,
     "text_encoders": [{"class": "CLIPTextModel"|"CLIPTextModelWithProjection", "config": CLIPTextConfig kwargs}],
     "tokenizers": [{"pad_token": ...}], "scheduler": diffusers scheduler config}

`sd1.json`, `sd2.json`, `sdxl.json` describe the real architectures; `tiny-*.json` the tiny test models (same block
structure, small widths). `infer_family_config` reads the sizes (channels, layers, transformer depth, text widths)
from a single-file checkpoint's tensor shapes, starting from the family's real config, so that real and tiny
checkpoints load through the same code. The only values that cannot be read from shapes are the attention head
counts; they follow the real models' rule:

* SD1 UNet: 8 heads in every block (diffusers' `attention_head_dim=8`).
* SD2/SDXL UNet and every text encoder: heads = width / 64 (head size 64); widths below 64 (tiny models only) use
  heads = max(1, width / 16).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

CONFIG_DIR = Path(__file__).resolve().parent
FAMILY_CONFIG_NAMES = {"SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl"}


class ConfigInferenceError(ValueError):
    """A checkpoint's tensors do not describe a UNet/VAE/text encoder this host can build."""


@lru_cache(maxsize=16)
def _read_config(name: str) -> str:
    path = CONFIG_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise KeyError(f"no model config {name!r} in {CONFIG_DIR} (known: {', '.join(known)})")
    return path.read_text(encoding="utf-8")


def load_config(name: str) -> dict[str, Any]:
    """A fresh copy of the shipped family config `name` ("sd1", "sd2", "sdxl", "tiny-sd1", ...)."""
    return json.loads(_read_config(name))


def family_config(family: str, tiny: bool = False) -> dict[str, Any]:
    """The shipped config of `family` ("SD1"|"SD2"|"SDXL"), real-sized or tiny."""
    if family not in FAMILY_CONFIG_NAMES:
        raise KeyError(f"unknown model family {family!r}; expected one of {', '.join(FAMILY_CONFIG_NAMES)}")
    base = FAMILY_CONFIG_NAMES[family]
    return load_config(f"tiny-{base}" if tiny else base)


def heads_for_width(width: int) -> int:
    """Attention heads for a layer `width` wide: width/64 (head size 64), or max(1, width/16) below 64."""
    return width // 64 if width >= 64 else max(1, width // 16)


# ---------------------------------------------------------------------------------------------------------------
# Inference from tensors
# ---------------------------------------------------------------------------------------------------------------

def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ConfigInferenceError(f"checkpoint has no tensor {key!r} (needed to infer the model size)")
    return tuple(state_dict[key].shape)


def _indices(keys: list[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def infer_unet_config(state_dict: Mapping[str, Any], prefix: str, base: dict[str, Any], family: str) -> dict[str, Any]:
    """UNet config from LDM tensors under `prefix` ("model.diffusion_model."), using `base` for the rest.

    Reads: in/out channels (conv_in / out.2), block_out_channels (the first resnet of each level), layers per
    block, which levels have attention, transformer depth per level, cross_attention_dim (attn2.to_k input),
    and for SDXL the `label_emb` input width.
    """
    cfg = copy.deepcopy(base)
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if not keys:
        raise ConfigInferenceError(f"checkpoint has no UNet tensors (keys starting with {prefix!r})")
    cfg["in_channels"] = _shape(state_dict, prefix + "input_blocks.0.0.weight")[1]
    cfg["out_channels"] = _shape(state_dict, prefix + "out.2.weight")[0]
    input_ids = _indices(keys, r"input_blocks\.(\d+)\.")
    # A level ends with a downsampler (`input_blocks.N.0.op`), except the last level.
    down_ids = [i for i in input_ids if f"input_blocks.{i}.0.op.weight" in keys]
    levels = len(down_ids) + 1
    layers = (down_ids[0] - 1) if down_ids else (len(input_ids) - 1)
    if layers < 1 or len(input_ids) != 1 + levels * layers + (levels - 1):
        raise ConfigInferenceError(
            f"UNet input blocks {input_ids[:3]}...{input_ids[-3:]} do not form levels of equal depth")
    channels, has_attn, depth = [], [], []
    for level in range(levels):
        first = 1 + level * (layers + 1)
        channels.append(_shape(state_dict, f"{prefix}input_blocks.{first}.0.out_layers.3.weight")[0])
        blocks = _indices(keys, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        has_attn.append(bool(blocks))
        depth.append(len(blocks) if blocks else 1)
    cfg["block_out_channels"] = channels
    cfg["layers_per_block"] = layers
    cfg["down_block_types"] = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn]
    cfg["up_block_types"] = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)]
    first_attn = next((1 + lv * (layers + 1) for lv, a in enumerate(has_attn) if a), None)
    if first_attn is None:
        raise ConfigInferenceError("UNet has no cross-attention blocks")
    cfg["cross_attention_dim"] = _shape(
        state_dict, f"{prefix}input_blocks.{first_attn}.1.transformer_blocks.0.attn2.to_k.weight")[1]
    proj_in = _shape(state_dict, f"{prefix}input_blocks.{first_attn}.1.proj_in.weight")
    cfg["use_linear_projection"] = len(proj_in) == 2
    if family == "SD1":
        cfg["attention_head_dim"] = 8
    else:
        cfg["attention_head_dim"] = [heads_for_width(c) for c in channels]
    if family == "SDXL" or "transformer_layers_per_block" in cfg:
        cfg["transformer_layers_per_block"] = depth
    elif any(d != 1 for d in depth):
        cfg["transformer_layers_per_block"] = depth
    if prefix + "label_emb.0.0.weight" in state_dict:
        cfg["projection_class_embeddings_input_dim"] = _shape(state_dict, prefix + "label_emb.0.0.weight")[1]
    return cfg


def infer_vae_config(state_dict: Mapping[str, Any], prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """AutoencoderKL config from LDM `first_stage_model.*` tensors: channels per level, layers, latent channels."""
    cfg = copy.deepcopy(base)
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if not keys:
        raise ConfigInferenceError(f"checkpoint has no VAE tensors (keys starting with {prefix!r})")
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    layers = _indices(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    cfg["block_out_channels"] = [_shape(state_dict, f"{prefix}encoder.down.{i}.block.0.conv2.weight")[0] for i in levels]
    cfg["layers_per_block"] = len(layers)
    cfg["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
    cfg["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
    cfg["in_channels"] = _shape(state_dict, prefix + "encoder.conv_in.weight")[1]
    cfg["out_channels"] = _shape(state_dict, prefix + "decoder.conv_out.weight")[0]
    if prefix + "post_quant_conv.weight" in state_dict:
        cfg["latent_channels"] = _shape(state_dict, prefix + "post_quant_conv.weight")[0]
    else:  # Flux's VAE has no quant convs: the decoder reads the latents directly
        cfg["latent_channels"] = _shape(state_dict, prefix + "decoder.conv_in.weight")[1]
        cfg["use_quant_conv"] = cfg["use_post_quant_conv"] = False
    return cfg


def infer_clip_config(state_dict: Mapping[str, Any], prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextConfig kwargs from HF-named CLIP tensors under `prefix` (`...transformer.text_model.`)."""
    cfg = copy.deepcopy(base)
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    vocab, hidden = _shape(state_dict, prefix + "embeddings.token_embedding.weight")
    cfg["vocab_size"], cfg["hidden_size"] = vocab, hidden
    cfg["max_position_embeddings"] = _shape(state_dict, prefix + "embeddings.position_embedding.weight")[0]
    cfg["num_hidden_layers"] = len(_indices(keys, r"encoder\.layers\.(\d+)\."))
    cfg["intermediate_size"] = _shape(state_dict, prefix + "encoder.layers.0.mlp.fc1.weight")[0]
    cfg["num_attention_heads"] = heads_for_width(hidden)
    return cfg


def infer_open_clip_config(state_dict: Mapping[str, Any], prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """CLIPTextConfig kwargs from OpenCLIP tensors under `prefix` (`cond_stage_model.model.`)."""
    cfg = copy.deepcopy(base)
    keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    vocab, hidden = _shape(state_dict, prefix + "token_embedding.weight")
    cfg["vocab_size"], cfg["hidden_size"] = vocab, hidden
    cfg["max_position_embeddings"] = _shape(state_dict, prefix + "positional_embedding")[0]
    cfg["num_hidden_layers"] = len(_indices(keys, r"transformer\.resblocks\.(\d+)\."))
    cfg["intermediate_size"] = _shape(state_dict, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0]
    cfg["num_attention_heads"] = heads_for_width(hidden)
    if prefix + "text_projection" in state_dict:
        cfg["projection_dim"] = _shape(state_dict, prefix + "text_projection")[1]
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# Building modules from a family config
# ---------------------------------------------------------------------------------------------------------------

def materialize_buffers(module: torch.nn.Module, device: torch.device | str | None = None) -> None:
    """Give buffers left on the meta device (after building empty and loading with `assign=True`) real values.

    The only such buffer in these models is CLIP's non-persistent `embeddings.position_ids` = arange(77)[None];
    any other meta buffer raises ConfigInferenceError naming it.
    """
    for name, buffer in list(module.named_buffers()):
        if not buffer.is_meta:
            continue
        if not name.endswith("position_ids"):
            raise ConfigInferenceError(f"buffer {name!r} has no value after loading")
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        target = device if device is not None else _first_param_device(module)
        value = torch.arange(buffer.shape[-1], device=target).expand(tuple(buffer.shape))
        owner.register_buffer(leaf, value, persistent=leaf not in owner._non_persistent_buffers_set)


def _first_param_device(module: torch.nn.Module) -> torch.device:
    for param in module.parameters():
        if not param.is_meta:
            return param.device
    return torch.device("cpu")


def text_encoder_class(name: str) -> type:
    """The transformers class named in a config ("CLIPTextModel" or "CLIPTextModelWithProjection")."""
    import transformers  # noqa: PLC0415

    if name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise ConfigInferenceError(f"unsupported text encoder class {name!r}")
    return getattr(transformers, name)


def folder_component(cls: Any, folder: Path, layout: bool = False) -> Any:
    """A diffusers/transformers model from a diffusers part folder, offline; `layout=True`: built from the folder's
    config on the meta device (no weights read), for tools that stream the weights themselves."""
    if not layout:
        return cls.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        if hasattr(cls, "from_config"):  # diffusers models
            return cls.from_config(cls.load_config(folder, local_files_only=True))
        return cls(cls.config_class.from_pretrained(folder, local_files_only=True))


def build_components(config: dict[str, Any], empty: bool = False) -> dict[str, Any]:
    """Instantiate {"unet", "vae", "text_encoders"} from a family config.

    `empty=True` builds every tensor on the meta device (no memory, no random init): load the real weights with
    `load_state_dict(..., assign=True)` right after, then call `materialize_buffers`. Otherwise weights are
    randomly initialised by the libraries' own init (on the current default device).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: PLC0415
    from transformers import CLIPTextConfig  # noqa: PLC0415

    with torch.device("meta") if empty else nullcontext():
        unet = UNet2DConditionModel.from_config(config["unet"])
        vae = AutoencoderKL.from_config(config["vae"])
        encoders = []
        for entry in config["text_encoders"]:
            cls = text_encoder_class(entry["class"])
            encoders.append(cls(CLIPTextConfig(**entry["config"])))
    return {"unet": unet, "vae": vae, "text_encoders": encoders}


def meta_param_shapes(config: dict[str, Any]) -> dict[str, dict[str, tuple[int, ...]]]:
    """{"unet": {param: shape}, "vae": {...}, "text_encoders.0": {...}} without allocating weights (meta device)."""
    built = build_components(config, empty=True)
    shapes = {"unet": _shapes(built["unet"]), "vae": _shapes(built["vae"])}
    for index, encoder in enumerate(built["text_encoders"]):
        shapes[f"text_encoders.{index}"] = _shapes(encoder)
    return shapes


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


def infer_family_config(state_dict: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The family config of a single-file checkpoint: the real config of `family` with every size read from
    the tensors (UNet, VAE, each text encoder). Raises ConfigInferenceError naming a missing tensor."""
    from modules.checkpoint_convert import TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX  # noqa: PLC0415

    config = family_config(family)
    config["unet"] = infer_unet_config(state_dict, UNET_PREFIX, config["unet"], family)
    config["vae"] = infer_vae_config(state_dict, VAE_PREFIX, config["vae"])
    for index, (kind, prefix) in enumerate(TEXT_PREFIXES[family]):
        entry = config["text_encoders"][index]
        infer = infer_clip_config if kind == "clip" else infer_open_clip_config
        entry["config"] = infer(state_dict, prefix, entry["config"])
    if family == "SDXL":
        pooled = config["text_encoders"][1]["config"]["projection_dim"]
        extra = config["unet"]["projection_class_embeddings_input_dim"] - pooled
        if extra <= 0 or extra % 6:
            raise ConfigInferenceError(
                f"SDXL label_emb input width {config['unet']['projection_class_embeddings_input_dim']} is not "
                f"6 time embeddings + the pooled text width {pooled} (a refiner or unknown SDXL variant?)")
        config["unet"]["addition_time_embed_dim"] = extra // 6
    return config
