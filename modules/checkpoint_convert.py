"""LDM/SGM single-file checkpoints <-> diffusers/transformers component state dicts.

Every name mapping here is derived from the model configs (block counts, layers per block, which levels have
attention), never from tables fixed for SD1.5 or SDXL sizes, so tiny test models and real ones go through the
same code.

Single-file prefixes per family:

* UNet: `model.diffusion_model.` (LDM `input_blocks`/`middle_block`/`output_blocks` names).
* VAE: `first_stage_model.` (LDM `encoder.down.i.block.j` names, attention as 1x1 convolutions).
* Text encoders: SD1 `cond_stage_model.transformer.text_model.` (HF CLIP names); SD2 `cond_stage_model.model.`
  (OpenCLIP); SDXL `conditioner.embedders.0.transformer.text_model.` (CLIP-L, HF names) and
  `conditioner.embedders.1.model.` (OpenCLIP bigG).

Tensors that change form on the way (`key_map_special["transforms"]`, keyed by model parameter):

* OpenCLIP `attn.in_proj_weight` (3h, h) / `in_proj_bias` (3h,) -> q, k, v rows [0:h], [h:2h], [2h:3h]
  (`{"op": "split", "index": i, "parts": 3}`);
* OpenCLIP `text_projection` (h, p), used as `x @ P`, -> `text_projection.weight` = P^T (p, h) (`{"op": "transpose"}`);
* VAE mid-block attention q/k/v/proj_out, 1x1 conv (c, c, 1, 1) -> linear (c, c) (`{"op": "reshape", "shape": ldm}`).
* Flux (`modules.flux_model`): unequal row splits (`{"op": "split", "index": i, "sizes": [h, h, h, m]}`, single
  blocks' fused `linear1`) and the final modulation's (shift, scale) -> (scale, shift) (`{"op": "swap_halves"}`).

Tensors of the file that no model parameter uses (EMA weights, noise-schedule buffers, `position_ids`, SD2's
`text_projection`, `logit_scale`...) are kept in `key_map_special["extra"]`, the original dtype of every key in
`["dtypes"]` and the original key order in `["order"]` (the model loader may instead list large ones in
`["extra_in_source"]`, re-read from the `["source"]` file when writing), so `diffusers_to_ldm` writes back exactly the same keys,
shapes, dtypes and (for unchanged weights) bytes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from modules.sd_model_types import FAMILIES

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIXES: dict[str, list[tuple[str, str]]] = {
    # (kind, prefix) per text encoder, in LoadedModel.text_encoders order.
    "SD1": [("clip", "cond_stage_model.transformer.text_model.")],
    "SD2": [("openclip", "cond_stage_model.model.")],
    "SDXL": [("clip", "conditioner.embedders.0.transformer.text_model."), ("openclip", "conditioner.embedders.1.model.")],
}

RESNET_UNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
RESNET_VAE = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
ATTENTION_VAE = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                  "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


class CheckpointConversionError(ValueError):
    """A single-file checkpoint does not hold the tensors its model needs (message names the key)."""


class UnknownModelFamilyError(ValueError):
    """A state dict matches none of SD1, SD2, SDXL."""


# ---------------------------------------------------------------------------------------------------------------
# Family detection
# ---------------------------------------------------------------------------------------------------------------

def detect_family(state_dict_keys: Iterable[str]) -> str:
    """"SD1", "SD2" or "SDXL" from the key layout of a single-file checkpoint.

    SDXL has `conditioner.embedders.1.model.*` (OpenCLIP bigG) and a UNet `label_emb`; SD2 has OpenCLIP text keys
    `cond_stage_model.model.*`; SD1 has HF CLIP keys `cond_stage_model.transformer.*`. Raises
    UnknownModelFamilyError (with example keys) for anything else (refiner, SD3, Flux, a LoRA file...).
    """
    keys = list(state_dict_keys)
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    if has_unet and any(k.startswith("conditioner.embedders.1.model.") for k in keys):
        if any(k.startswith("conditioner.embedders.0.transformer.") for k in keys):
            return "SDXL"
    if has_unet and any(k.startswith("cond_stage_model.model.") for k in keys):
        return "SD2"
    if has_unet and any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "SD1"
    examples = ", ".join(sorted(keys)[:5]) or "(no tensors)"
    raise UnknownModelFamilyError(
        "not an SD1/SD2/SDXL single-file checkpoint: expected model.diffusion_model.* with "
        "cond_stage_model.transformer.* (SD1), cond_stage_model.model.* (SD2) or conditioner.embedders.* (SDXL); "
        f"found {len(keys)} keys such as {examples}")


# ---------------------------------------------------------------------------------------------------------------
# UNet module names
# ---------------------------------------------------------------------------------------------------------------

def unet_ldm_block_map(unet_config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{diffusers block path: (LDM block path, kind)} with kind "resnet", "attention" or "plain".

    Numbering (L = layers_per_block, n = number of levels):
    * `input_blocks.0.0` = conv_in; level i, layer j: `input_blocks.{1 + i(L+1) + j}` with `.0` the resnet and
      `.1` the attention; level i < n-1 ends with `input_blocks.{1 + i(L+1) + L}.0.op` (downsampler).
    * `middle_block.0` / `.1` / `.2` = mid resnet 0, attention 0, resnet 1.
    * up level i, layer j (L+1 layers): `output_blocks.{i(L+1) + j}`, `.0` resnet, `.1` attention; the upsampler of
      level i < n-1 is `.2.conv` after an attention, else `.1.conv`.
    """
    layers = int(unet_config["layers_per_block"])
    down_types = list(unet_config["down_block_types"])
    up_types = list(unet_config["up_block_types"])
    levels = len(down_types)
    blocks: dict[str, tuple[str, str]] = {
        "conv_in": ("input_blocks.0.0", "plain"),
        "time_embedding.linear_1": ("time_embed.0", "plain"),
        "time_embedding.linear_2": ("time_embed.2", "plain"),
        "add_embedding.linear_1": ("label_emb.0.0", "plain"),
        "add_embedding.linear_2": ("label_emb.0.2", "plain"),
        "conv_norm_out": ("out.0", "plain"),
        "conv_out": ("out.2", "plain"),
        "mid_block.resnets.0": ("middle_block.0", "resnet"),
        "mid_block.attentions.0": ("middle_block.1", "attention"),
        "mid_block.resnets.1": ("middle_block.2", "resnet"),
    }
    for i, kind in enumerate(down_types):
        for j in range(layers):
            index = 1 + i * (layers + 1) + j
            blocks[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{index}.0", "resnet")
            if "CrossAttn" in kind:
                blocks[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{index}.1", "attention")
        if i < levels - 1:
            blocks[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{1 + i * (layers + 1) + layers}.0.op", "plain")
    for i, kind in enumerate(up_types):
        has_attention = "CrossAttn" in kind
        for j in range(layers + 1):
            index = i * (layers + 1) + j
            blocks[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{index}.0", "resnet")
            if has_attention:
                blocks[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{index}.1", "attention")
        if i < levels - 1:
            last = i * (layers + 1) + layers
            blocks[f"up_blocks.{i}.upsamplers.0.conv"] = (f"output_blocks.{last}.{2 if has_attention else 1}.conv", "plain")
    return blocks


def _translate(path: str, blocks: Mapping[str, tuple[str, str]], resnet_names: Mapping[str, str],
               attention_names: Mapping[str, str] | None = None) -> str | None:
    """Map a diffusers module path through the block map (longest block prefix wins); None when outside it."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head not in blocks:
            continue
        target, kind = blocks[head]
        rest = ".".join(parts[cut:])
        if not rest:
            return target
        if kind == "resnet":
            sub = _translate_sub(rest, resnet_names)
        elif kind == "attention" and attention_names is not None:
            sub = _translate_sub(rest, attention_names)
        else:
            sub = rest
        return None if sub is None else f"{target}.{sub}"
    return None


def _translate_sub(rest: str, names: Mapping[str, str]) -> str | None:
    for src in sorted(names, key=len, reverse=True):
        if rest == src or rest.startswith(src + "."):
            return names[src] + rest[len(src):]
    return None


def unet_ldm_module_map(unet_config: Mapping[str, Any], module_names: Iterable[str] | None = None) -> dict[str, str]:
    """{diffusers module path: LDM module path} for every UNet module that has parameters.

    E.g. "down_blocks.0.attentions.0.proj_in" -> "input_blocks.1.1.proj_in",
    "down_blocks.0.resnets.0.conv1" -> "input_blocks.1.0.in_layers.2". `module_names` (the loaded UNet's modules
    that own parameters) avoids building a meta-device UNet from the config to list them.
    """
    if module_names is None:
        from diffusers import UNet2DConditionModel  # noqa: PLC0415

        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(dict(unet_config))
        module_names = [name for name, module in unet.named_modules()
                        if name and any(True for _ in module.parameters(recurse=False))]
    blocks = unet_ldm_block_map(unet_config)
    result = {}
    for name in module_names:
        target = _translate(name, blocks, RESNET_UNET)
        if target is None:
            raise CheckpointConversionError(f"UNet module {name!r} has no LDM counterpart for this config")
        result[name] = target
    return result


def unet_ldm_module_map_for(unet: torch.nn.Module) -> dict[str, str]:
    """`unet_ldm_module_map` for a built diffusers UNet (uses its config and its own module list)."""
    names = [name for name, module in unet.named_modules() if name and any(True for _ in module.parameters(recurse=False))]
    return unet_ldm_module_map(unet.config, names)


# ---------------------------------------------------------------------------------------------------------------
# VAE and text encoder parameter names
# ---------------------------------------------------------------------------------------------------------------

def vae_ldm_block_map(vae_config: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """{diffusers VAE block path: (LDM path, kind)}; decoder up level i is LDM `up.{n-1-i}`."""
    levels = len(vae_config["down_block_types"])
    layers = int(vae_config["layers_per_block"])
    blocks: dict[str, tuple[str, str]] = {"quant_conv": ("quant_conv", "plain"),
                                          "post_quant_conv": ("post_quant_conv", "plain")}
    for part in ("encoder", "decoder"):
        blocks[f"{part}.conv_in"] = (f"{part}.conv_in", "plain")
        blocks[f"{part}.conv_out"] = (f"{part}.conv_out", "plain")
        blocks[f"{part}.conv_norm_out"] = (f"{part}.norm_out", "plain")
        blocks[f"{part}.mid_block.resnets.0"] = (f"{part}.mid.block_1", "resnet")
        blocks[f"{part}.mid_block.resnets.1"] = (f"{part}.mid.block_2", "resnet")
        blocks[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", "attention")
    for i in range(levels):
        for j in range(layers):
            blocks[f"encoder.down_blocks.{i}.resnets.{j}"] = (f"encoder.down.{i}.block.{j}", "resnet")
        if i < levels - 1:
            blocks[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = (f"encoder.down.{i}.downsample.conv", "plain")
        ldm = levels - 1 - i
        for j in range(layers + 1):
            blocks[f"decoder.up_blocks.{i}.resnets.{j}"] = (f"decoder.up.{ldm}.block.{j}", "resnet")
        if i < levels - 1:
            blocks[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = (f"decoder.up.{ldm}.upsample.conv", "plain")
    return blocks


def _split_param(name: str) -> tuple[str, str]:
    module, _, leaf = name.rpartition(".")
    return module, leaf


def _open_clip_name(param: str) -> tuple[str, dict[str, Any] | None]:
    """OpenCLIP key (without prefix) and transform for an HF CLIP parameter name without `text_model.`."""
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    if param in fixed:
        return fixed[param], None
    if param == "text_projection.weight":
        return "text_projection", {"op": "transpose"}
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", param)
    if not match:
        raise CheckpointConversionError(f"text encoder parameter {param!r} has no OpenCLIP counterpart")
    layer, module, leaf = match.groups()
    base = f"transformer.resblocks.{layer}."
    qkv = re.fullmatch(r"self_attn\.([qkv])_proj", module)
    if qkv:
        return f"{base}attn.in_proj_{leaf}", {"op": "split", "index": "qkv".index(qkv.group(1)), "parts": 3}
    if module not in OPENCLIP_LAYER:
        raise CheckpointConversionError(f"text encoder parameter {param!r} has no OpenCLIP counterpart")
    return f"{base}{OPENCLIP_LAYER[module]}.{leaf}", None


def vae_key_map(vae_config: Mapping[str, Any], param_shapes: Mapping[str, tuple[int, ...]],
                prefix: str) -> tuple[dict[str, str], dict[str, dict]]:
    """(key_map, transforms) of the VAE alone: {"vae.<param>": prefix + LDM name}, for LDM VAE tensors under
    `prefix` ("first_stage_model." in SD checkpoints, "" in Flux's `ae.safetensors`, "vae." in ComfyUI bundles)."""
    key_map: dict[str, str] = {}
    transforms: dict[str, dict] = {}
    vae_blocks = vae_ldm_block_map(vae_config)
    for param, shape in param_shapes.items():
        module, leaf = _split_param(param)
        target = _translate(module, vae_blocks, RESNET_VAE, ATTENTION_VAE)
        if target is None:
            raise CheckpointConversionError(f"VAE parameter {param!r} has no LDM counterpart for this config")
        key_map[f"vae.{param}"] = f"{prefix}{target}.{leaf}"
        if ".mid.attn_1." in target and leaf == "weight" and len(shape) == 2:
            transforms[f"vae.{param}"] = {"op": "reshape", "shape": [*shape, 1, 1]}
    return key_map, transforms


def build_key_map(family: str, config: Mapping[str, Any],
                  param_shapes: Mapping[str, Mapping[str, tuple[int, ...]]]) -> tuple[dict[str, str], dict[str, dict]]:
    """(key_map, transforms) for every model parameter of a family.

    `param_shapes` is {"unet": {param: shape}, "vae": ..., "text_encoders.0": ...} (from the built models or
    `model_configs.meta_param_shapes`). key_map: {"unet.<param>": "model.diffusion_model.<ldm>", ...};
    transforms: {model key: {"op": "split"|"transpose"|"reshape", ...}} for tensors that change form.
    """
    if family not in TEXT_PREFIXES:
        raise UnknownModelFamilyError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    key_map: dict[str, str] = {}
    transforms: dict[str, dict] = {}
    unet_blocks = unet_ldm_block_map(config["unet"])
    for param in param_shapes["unet"]:
        module, leaf = _split_param(param)
        target = _translate(module, unet_blocks, RESNET_UNET)
        if target is None:
            raise CheckpointConversionError(f"UNet parameter {param!r} has no LDM counterpart for this config")
        key_map[f"unet.{param}"] = f"{UNET_PREFIX}{target}.{leaf}"
    vae_map, vae_transforms = vae_key_map(config["vae"], param_shapes["vae"], VAE_PREFIX)
    key_map.update(vae_map)
    transforms.update(vae_transforms)
    for index, (kind, prefix) in enumerate(TEXT_PREFIXES[family]):
        component = f"text_encoders.{index}"
        for param in param_shapes[component]:
            bare = param.removeprefix("text_model.")
            if kind == "clip":
                if bare == "text_projection.weight":
                    raise CheckpointConversionError(f"{component}: CLIP-L has no text_projection in LDM checkpoints")
                key_map[f"{component}.{param}"] = prefix + bare
            else:
                ldm, transform = _open_clip_name(bare)
                key_map[f"{component}.{param}"] = prefix + ldm
                if transform is not None:
                    transforms[f"{component}.{param}"] = transform
    return key_map, transforms


# ---------------------------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------------------------

def _component_of(model_key: str) -> tuple[str, str]:
    if model_key.startswith("text_encoders."):
        first, index, rest = model_key.split(".", 2)
        return f"{first}.{index}", rest
    component, _, rest = model_key.partition(".")
    return component, rest


def ldm_tensor_to_model(tensor: torch.Tensor, transform: Mapping[str, Any] | None,
                        shape: tuple[int, ...] | None) -> torch.Tensor:
    """LDM tensor -> model tensor (a view of `tensor`, except for a transpose, which is made contiguous)."""
    if transform is None:
        return tensor
    op = transform["op"]
    if op == "split":
        if "sizes" in transform:  # unequal parts (Flux single blocks: q, k, v, mlp in one linear1)
            return tensor.split([int(n) for n in transform["sizes"]], dim=0)[int(transform["index"])]
        return tensor.chunk(int(transform["parts"]), dim=0)[int(transform["index"])]
    if op == "swap_halves":  # (shift, scale) <-> (scale, shift) along dim 0; its own inverse
        first, second = tensor.chunk(2, dim=0)
        return torch.cat([second, first], dim=0)
    if op == "transpose":
        return tensor.t().contiguous()
    if op == "reshape":
        return tensor.reshape(shape) if shape is not None else tensor.reshape(tensor.shape[0], -1)
    raise CheckpointConversionError(f"unknown tensor transform {op!r}")


def model_tensor_to_ldm(tensor: torch.Tensor, transform: Mapping[str, Any] | None) -> torch.Tensor:
    """Inverse of `ldm_tensor_to_model` for one model tensor (a split part comes back as itself: the caller
    concatenates the parts of one LDM tensor in index order)."""
    if transform is None or transform["op"] == "split":
        return tensor
    if transform["op"] == "transpose":
        return tensor.t().contiguous()
    if transform["op"] == "reshape":
        return tensor.reshape(transform["shape"])
    if transform["op"] == "swap_halves":  # its own inverse (Flux's final-layer modulation)
        return ldm_tensor_to_model(tensor, transform, None)
    raise CheckpointConversionError(f"unknown tensor transform {transform['op']!r}")


LEGACY_CLIP_PREFIXES = {  # old SD1 files saved from transformers < 4.?: CLIP names without `text_model.`
    "cond_stage_model.transformer.embeddings.": "cond_stage_model.transformer.text_model.embeddings.",
    "cond_stage_model.transformer.encoder.": "cond_stage_model.transformer.text_model.encoder.",
    "cond_stage_model.transformer.final_layer_norm.": "cond_stage_model.transformer.text_model.final_layer_norm.",
}


def canonical_keys(keys: Iterable[str]) -> dict[str, str]:
    """{canonical key: key in the file} for keys stored under a legacy name (A1111 accepts these too)."""
    renamed = {}
    for key in keys:
        for old, new in LEGACY_CLIP_PREFIXES.items():
            if key.startswith(old):
                renamed[new + key[len(old):]] = key
    return renamed


def canonical_view(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict under canonical names (same tensors; legacy CLIP names renamed)."""
    original = {v: k for k, v in canonical_keys(state_dict).items()}
    return {original.get(key, key): tensor for key, tensor in state_dict.items()}


def ldm_to_diffusers(state_dict: Mapping[str, torch.Tensor], family: str, configs: Mapping[str, Any],
                     param_shapes: Mapping[str, Mapping[str, tuple[int, ...]]] | None = None,
                     ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str], dict[str, Any]]:
    """Split a single-file state dict into component state dicts named like the diffusers/transformers models.

    Keys stored under legacy SD1 CLIP names (`cond_stage_model.transformer.encoder...`) are found too, and
    key_map records the name actually used in the file. Returns (components, key_map, key_map_special): components = {"unet": {...}, "vae": {...},
    "text_encoders.0": {...}[, "text_encoders.1": {...}]}; tensors keep the file's dtype (the caller casts when
    loading). key_map: {"unet.<param>": "<ldm key>"}; key_map_special: {"transforms", "dtypes", "extra", "order"}
    (see the module docstring). Raises CheckpointConversionError naming the first missing or mis-shaped key.
    """
    if param_shapes is None:
        from modules.model_configs import meta_param_shapes  # noqa: PLC0415

        param_shapes = meta_param_shapes(dict(configs))
    key_map, transforms = build_key_map(family, configs, param_shapes)
    legacy = canonical_keys(state_dict)
    key_map = {model_key: legacy.get(ldm_key, ldm_key) for model_key, ldm_key in key_map.items()}
    components: dict[str, dict[str, torch.Tensor]] = {name: {} for name in param_shapes}
    used: set[str] = set()
    for model_key, ldm_key in key_map.items():
        if ldm_key not in state_dict:
            raise CheckpointConversionError(f"checkpoint lacks tensor {ldm_key!r} (needed for {model_key})")
        component, param = _component_of(model_key)
        expected = tuple(param_shapes[component][param])
        tensor = ldm_tensor_to_model(state_dict[ldm_key], transforms.get(model_key), expected)
        if tuple(tensor.shape) != expected:
            raise CheckpointConversionError(
                f"tensor {ldm_key!r} has shape {tuple(state_dict[ldm_key].shape)}, which does not give "
                f"{model_key} its shape {expected}")
        components[component][param] = tensor
        used.add(ldm_key)
    for model_key, transform in transforms.items():
        if transform["op"] == "reshape":
            transform["shape"] = list(state_dict[key_map[model_key]].shape)
    special: dict[str, Any] = {
        "transforms": transforms,
        "dtypes": {key: str(tensor.dtype).removeprefix("torch.") for key, tensor in state_dict.items()},
        "extra": {key: tensor for key, tensor in state_dict.items() if key not in used},
        "order": list(state_dict.keys()),
    }
    return components, key_map, special


def _as_state_dict(component: Any) -> Mapping[str, torch.Tensor]:
    return component.state_dict() if isinstance(component, torch.nn.Module) else component


def _read_source_tensors(source: str | None, keys: list[str]) -> dict[str, torch.Tensor]:
    """Tensors left in the source `.safetensors` file at load time (`key_map_special["extra_in_source"]`)."""
    from safetensors import safe_open  # noqa: PLC0415

    if not source:
        raise CheckpointConversionError(f"tensors {keys[:3]} were left in the source file, but no source is recorded")
    try:
        with safe_open(source, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in keys}
    except Exception as exc:  # missing/changed file: safetensors raises its own error types
        raise CheckpointConversionError(
            f"{source}: cannot re-read tensors {keys[:3]} kept in the source checkpoint ({exc})") from exc


def diffusers_to_ldm(components: Mapping[str, Any], key_map: Mapping[str, str],
                     key_map_special: Mapping[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """Inverse of `ldm_to_diffusers`: component state dicts (or modules) -> single-file state dict.

    Split q/k/v parts are concatenated in index order, transposed/reshaped tensors restored, every tensor cast
    back to its original dtype, the file's other tensors (`extra`) added, and keys emitted in the original order.
    With no `key_map_special` (a new file), tensors keep the model's dtype and 1x1-conv shapes use (c, c, 1, 1).
    """
    special = key_map_special or {}
    transforms: Mapping[str, Mapping[str, Any]] = special.get("transforms", {})
    dtypes: Mapping[str, str] = special.get("dtypes", {})
    states = {name: _as_state_dict(component) for name, component in components.items()}
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[int, torch.Tensor]] = {}
    parts_needed: dict[str, int] = {}
    for model_key, ldm_key in key_map.items():
        component, param = _component_of(model_key)
        if component not in states or param not in states[component]:
            raise CheckpointConversionError(f"model has no parameter {model_key!r} to write as {ldm_key!r}")
        tensor = states[component][param].detach()
        transform = transforms.get(model_key)
        if transform is not None and transform["op"] == "split":
            pending.setdefault(ldm_key, {})[int(transform["index"])] = tensor
            parts_needed[ldm_key] = len(transform["sizes"]) if "sizes" in transform else int(transform["parts"])
        else:
            out[ldm_key] = model_tensor_to_ldm(tensor, transform)
    for ldm_key, parts in pending.items():
        if sorted(parts) != list(range(parts_needed[ldm_key])):
            raise CheckpointConversionError(f"{ldm_key!r}: only parts {sorted(parts)} of {parts_needed[ldm_key]}")
        out[ldm_key] = torch.cat([parts[i] for i in range(parts_needed[ldm_key])], dim=0)
    for key, tensor in special.get("extra", {}).items():
        out.setdefault(key, tensor)
    lazy = [key for key in special.get("extra_in_source", []) if key not in out]
    if lazy:
        out.update(_read_source_tensors(special.get("source"), lazy))
    for key, name in dtypes.items():
        if key in out and str(out[key].dtype).removeprefix("torch.") != name:
            out[key] = out[key].to(getattr(torch, name))
    order = list(special.get("order", []))
    ordered = {key: out[key] for key in order if key in out}
    ordered.update({key: tensor for key, tensor in out.items() if key not in ordered})
    return {key: tensor.contiguous() for key, tensor in ordered.items()}


def scheduler_config(family: str, prediction_type: str) -> dict[str, Any]:
    """The training noise schedule of SD1/SD2/SDXL: scaled_linear betas 0.00085..0.012 over 1000 steps."""
    if family not in TEXT_PREFIXES:
        raise UnknownModelFamilyError(f"unknown model family {family!r}")
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    return {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "prediction_type": prediction_type, "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
            "timestep_spacing": "leading"}
