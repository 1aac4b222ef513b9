"""Flux.1 (dev and schnell): recognising, converting and loading the files people have, fully offline.

Files understood:

* BFL single-file transformer (`flux1-dev.safetensors`): `double_blocks.N.img_attn.qkv.weight`,
  `single_blocks.N.linear1.weight`, ... ; the same under ComfyUI's `model.diffusion_model.` prefix, optionally
  bundled with the VAE (`vae.` + LDM names) and the text encoders (`text_encoders.clip_l.transformer.` and
  `text_encoders.t5xxl.transformer.` + transformers names).
* Text encoders and VAE for a transformer-only file, from `models/text_encoder/` and `models/VAE/` (Forge's
  folders): CLIP-L (`clip_l.safetensors`, transformers names), T5-XXL (`t5xxl_fp16.safetensors`, transformers
  `T5EncoderModel` names) and the 16-channel VAE (`ae.safetensors`, LDM names). Decision: the first file of each kind
  (by name) whose tensors fit is used, and the load log names it; T5's tokenizer, which no single file carries, is
  the first folder under `models/text_encoder/` holding a `tokenizer.json` (copy `tokenizer_2/` of the FLUX.1
  diffusers repository there).
* diffusers folders (`transformer/`, `vae/`, `text_encoder/`, `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`).

Sizes come from tensor shapes (`infer_transformer_config`, `infer_t5_config`), starting from the shipped
`model_configs/flux.json`; the BFL <-> diffusers names come from the inferred config (`bfl_key_map`), so a tiny
test model and the real one go through the same code. dev vs schnell: dev has the distilled-guidance embedder
(`guidance_in`), schnell does not; each gets its flow-matching schedule from the config (`scheduler.dev`: dynamic
shift by image size; `scheduler.schnell`: no shift).

The Flux transformer sits in `LoadedModel.unet` (the denoiser slot), so the LoRA engine, the merge tool and the
pristine-weight backup see it under the `unet.` prefix; `text_encoders` = [CLIP-L, T5].
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from modules import checkpoint_convert, model_configs, pristine_weights
from modules.sd_model_types import FLUX, CheckpointInfo, LoadedModel

log = logging.getLogger(__name__)

BFL_MARKER = "double_blocks.0.img_attn.qkv.weight"
COMFY_PREFIX = "model.diffusion_model."
BUNDLED_VAE_PREFIX = "vae."
BUNDLED_TEXT_PREFIXES = {"clip": "text_encoders.clip_l.transformer.", "t5": "text_encoders.t5xxl.transformer."}
TEXT_ENCODER_DIR = "text_encoder"
VAE_DIR = "VAE"


class FluxLoadError(ValueError):
    """A Flux file set is incomplete or does not fit; the message names the file and what is missing."""


# ---------------------------------------------------------------------------------------------------------------
# Recognising files
# ---------------------------------------------------------------------------------------------------------------

def bfl_prefix(keys: Iterable[str]) -> str | None:
    """"" for a BFL transformer file, "model.diffusion_model." for ComfyUI's layout, None when not Flux."""
    keys = set(keys)
    for prefix in ("", COMFY_PREFIX):
        if prefix + BFL_MARKER in keys:
            return prefix
    return None


def is_flux_folder(path: Path) -> bool:
    """A diffusers folder of a Flux pipeline (`transformer/config.json`)."""
    return (Path(path) / "transformer" / "config.json").is_file()


def _count(keys: Iterable[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    return max(found) + 1 if found else 0


def _shape(shapes: Mapping[str, Any], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise FluxLoadError(f"Flux file has no tensor {key!r} (needed to infer the model size)")
    value = shapes[key]
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def rope_axes(head_dim: int) -> list[int]:
    """RoPE axes (time, height, width) for a head size: Flux's [16, 56, 56] for 128, the same proportions else."""
    side = head_dim * 7 // 16
    return [head_dim - 2 * side, side, side]


def infer_transformer_config(shapes: Mapping[str, Any], prefix: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """FluxTransformer2DModel config from BFL tensor shapes under `prefix` (widths, block counts, heads, guidance).

    inner width = `img_in` rows; head size = the q-norm scale's length; heads = inner / head size; text width =
    `txt_in` columns; pooled width = `vector_in.in_layer` columns; guidance embedder present = dev.
    """
    cfg = dict(base)
    keys = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    inner, in_channels = _shape(shapes, prefix + "img_in.weight")
    head = _shape(shapes, prefix + "double_blocks.0.img_attn.norm.query_norm.scale")[0]
    cfg.update(
        in_channels=in_channels, num_layers=_count(keys, r"double_blocks\.(\d+)\."),
        num_single_layers=_count(keys, r"single_blocks\.(\d+)\."), attention_head_dim=head,
        num_attention_heads=inner // head, joint_attention_dim=_shape(shapes, prefix + "txt_in.weight")[1],
        pooled_projection_dim=_shape(shapes, prefix + "vector_in.in_layer.weight")[1],
        guidance_embeds=prefix + "guidance_in.in_layer.weight" in shapes, axes_dims_rope=rope_axes(head))
    out = _shape(shapes, prefix + "final_layer.linear.weight")[0]
    cfg["out_channels"] = None if out == in_channels else out
    return cfg


def infer_t5_config(shapes: Mapping[str, Any], prefix: str, base: Mapping[str, Any]) -> dict[str, Any]:
    """T5Config kwargs from `T5EncoderModel` tensor shapes under `prefix`; heads = the relative-bias table's width."""
    cfg = dict(base)
    keys = [k[len(prefix):] for k in shapes if k.startswith(prefix)]
    vocab, width = _shape(shapes, prefix + "shared.weight")
    attn = prefix + "encoder.block.0.layer.0.SelfAttention."
    buckets, heads = _shape(shapes, attn + "relative_attention_bias.weight")
    cfg.update(vocab_size=vocab, d_model=width, num_layers=_count(keys, r"encoder\.block\.(\d+)\."), num_heads=heads,
               relative_attention_num_buckets=buckets, d_kv=_shape(shapes, attn + "q.weight")[0] // heads,
               d_ff=_shape(shapes, prefix + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")[0])
    return cfg


def checkpoint_has_guidance(path: Path) -> bool:
    """Whether a checkpoint on disk is Flux dev (has the distilled-guidance embedder), from the safetensors header
    or the diffusers folder's `transformer/config.json`, without loading it; False for anything else or unreadable."""
    import json  # noqa: PLC0415

    path = Path(path)
    try:
        if is_flux_folder(path):
            config = json.loads((path / "transformer" / "config.json").read_text(encoding="utf-8"))
            return bool(config.get("guidance_embeds"))
        if path.suffix.lower() != ".safetensors":
            return False
        keys = _header_shapes(path).keys()
    except (OSError, ValueError):
        return False
    prefix = bfl_prefix(keys)
    return prefix is not None and prefix + "guidance_in.in_layer.weight" in keys


def variant(transformer_config: Mapping[str, Any]) -> str:
    """"dev" (distilled guidance embedder) or "schnell"."""
    return "dev" if transformer_config.get("guidance_embeds") else "schnell"


# ---------------------------------------------------------------------------------------------------------------
# BFL <-> diffusers names, from the config
# ---------------------------------------------------------------------------------------------------------------

def _embedder(bfl: str, diffusers: str) -> dict[str, str]:
    return {f"{diffusers}.linear_1": f"{bfl}.in_layer", f"{diffusers}.linear_2": f"{bfl}.out_layer"}


def bfl_module_map(config: Mapping[str, Any]) -> dict[str, tuple[str, int, int] | str]:
    """{diffusers module path: BFL module path} for every transformer module with weights, from the config.

    A value `(bfl path, start, stop)` means the diffusers module is rows [start:stop) of a fused BFL linear
    (q/k/v of `img_attn.qkv`, `txt_attn.qkv`; q/k/v/mlp of a single block's `linear1`). The final modulation
    `norm_out.linear` is BFL's `final_layer.adaLN_modulation.1` with its halves swapped (see `bfl_key_map`).
    """
    inner = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    mlp = 4 * inner  # FluxTransformerBlock / FluxSingleTransformerBlock use mlp_ratio 4
    names: dict[str, tuple[str, int, int] | str] = {
        "x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
        "norm_out.linear": "final_layer.adaLN_modulation.1",
        **_embedder("time_in", "time_text_embed.timestep_embedder"),
        **_embedder("vector_in", "time_text_embed.text_embedder"),
    }
    if config.get("guidance_embeds"):
        names.update(_embedder("guidance_in", "time_text_embed.guidance_embedder"))
    for i in range(int(config["num_layers"])):
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        names.update({d + "norm1.linear": b + "img_mod.lin", d + "norm1_context.linear": b + "txt_mod.lin",
                      d + "attn.to_out.0": b + "img_attn.proj", d + "attn.to_add_out": b + "txt_attn.proj",
                      d + "attn.norm_q": b + "img_attn.norm.query_norm", d + "attn.norm_k": b + "img_attn.norm.key_norm",
                      d + "attn.norm_added_q": b + "txt_attn.norm.query_norm",
                      d + "attn.norm_added_k": b + "txt_attn.norm.key_norm",
                      d + "ff.net.0.proj": b + "img_mlp.0", d + "ff.net.2": b + "img_mlp.2",
                      d + "ff_context.net.0.proj": b + "txt_mlp.0", d + "ff_context.net.2": b + "txt_mlp.2"})
        for n, letter in enumerate("qkv"):
            names[d + f"attn.to_{letter}"] = (b + "img_attn.qkv", n * inner, (n + 1) * inner)
            names[d + f"attn.add_{letter}_proj"] = (b + "txt_attn.qkv", n * inner, (n + 1) * inner)
    for i in range(int(config["num_single_layers"])):
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        names.update({d + "norm.linear": b + "modulation.lin", d + "proj_out": b + "linear2",
                      d + "attn.norm_q": b + "norm.query_norm", d + "attn.norm_k": b + "norm.key_norm"})
        for n, letter in enumerate("qkv"):
            names[d + f"attn.to_{letter}"] = (b + "linear1", n * inner, (n + 1) * inner)
        names[d + "proj_mlp"] = (b + "linear1", 3 * inner, 3 * inner + mlp)
    return names


def single_block_qkv(module_map: Mapping[str, tuple[str, int, int] | str]) -> dict[str, list[tuple[str, int, int]]]:
    """{"single_blocks.N.qkv": [("unet.<q/k/v module>", start, stop), ...]}: the q/k/v rows of each single block's
    `linear1` (BFL's own split of linear1 into qkv and mlp; XLabs LoRAs train this part)."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for path, target in module_map.items():
        if isinstance(target, tuple) and target[0].endswith(".linear1") and ".attn.to_" in path:
            groups.setdefault(target[0][: -len("linear1")] + "qkv", []).append((f"unet.{path}", target[1], target[2]))
    return groups


def bfl_key_map(config: Mapping[str, Any], param_names: Iterable[str], prefix: str = ""
                ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(key_map, transforms) for the transformer's parameters, in `checkpoint_convert`'s form.

    key_map: {"unet.<diffusers param>": prefix + BFL key} (RMSNorm `weight` <- BFL `scale`); transforms: fused rows
    as `{"op": "split", "index": i, "sizes": [...]}`, the final modulation as `{"op": "swap_halves"}`.
    """
    modules = bfl_module_map(config)
    fused_sizes: dict[str, list[tuple[int, int]]] = {}
    for target in modules.values():
        if isinstance(target, tuple):
            fused_sizes.setdefault(target[0], []).append((target[1], target[2]))
    key_map: dict[str, str] = {}
    transforms: dict[str, dict[str, Any]] = {}
    for param in param_names:
        module, _, leaf = param.rpartition(".")
        if module not in modules:
            raise FluxLoadError(f"Flux transformer parameter {param!r} has no BFL counterpart for this config")
        target = modules[module]
        if isinstance(target, tuple):
            bfl, start, stop = target
            spans = sorted(fused_sizes[bfl])
            transforms[f"unet.{param}"] = {"op": "split", "index": spans.index((start, stop)),
                                           "sizes": [b - a for a, b in spans]}
            key_map[f"unet.{param}"] = f"{prefix}{bfl}.{leaf}"
            continue
        bfl_leaf = "scale" if target.endswith("_norm") and leaf == "weight" else leaf  # BFL's RMSNorm calls it scale
        key_map[f"unet.{param}"] = f"{prefix}{target}.{bfl_leaf}"
        if module == "norm_out.linear":
            transforms[f"unet.{param}"] = {"op": "swap_halves"}
    return key_map, transforms


# ---------------------------------------------------------------------------------------------------------------
# Building modules
# ---------------------------------------------------------------------------------------------------------------

def base_config(tiny: bool = False) -> dict[str, Any]:
    """The shipped Flux config (`model_configs/flux.json`, or `tiny-flux.json`)."""
    return model_configs.load_config("tiny-flux" if tiny else "flux")


def build_modules(config: Mapping[str, Any], empty: bool = False) -> dict[str, torch.nn.Module]:
    """{"unet": FluxTransformer2DModel, "vae": AutoencoderKL, "text_encoders.0": CLIPTextModel,
    "text_encoders.1": T5EncoderModel} from a Flux config (`empty=True`: on the meta device, no memory)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: PLC0415
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel  # noqa: PLC0415

    with torch.device("meta") if empty else torch.device("cpu"):
        return {"unet": FluxTransformer2DModel.from_config(dict(config["transformer"])),
                "vae": AutoencoderKL.from_config(dict(config["vae"])),
                "text_encoders.0": CLIPTextModel(CLIPTextConfig(**config["clip"]["config"])),
                "text_encoders.1": T5EncoderModel(T5Config(**config["t5"]["config"]))}


def _param_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in module.state_dict().items()}


def scheduler_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flow-matching schedule of this variant (`scheduler.dev` or `scheduler.schnell` of the config)."""
    return dict(config["scheduler"][variant(config["transformer"])])


# ---------------------------------------------------------------------------------------------------------------
# Component sources
# ---------------------------------------------------------------------------------------------------------------

def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from modules.safetensors_header import read_header  # noqa: PLC0415

    header = read_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def _kind_of(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str] | None:
    """("clip"|"t5"|"vae", prefix) for a stand-alone text-encoder or 16-channel VAE file, else None."""
    found = _file_kind(shapes)
    return found[:2] if found is not None and found[0] != "other_vae" else None


def _file_kind(shapes: Mapping[str, tuple[int, ...]]) -> tuple[str, str, int] | None:
    """(kind, prefix, latent channels or 0): kind "clip", "t5", "vae" (16 latent channels) or "other_vae"."""
    for key in shapes:
        if key.endswith("encoder.block.0.layer.0.SelfAttention.q.weight"):
            return "t5", key[: -len("encoder.block.0.layer.0.SelfAttention.q.weight")], 0
        if key.endswith("embeddings.token_embedding.weight"):
            return "clip", key[: -len("embeddings.token_embedding.weight")], 0
        if key.endswith("decoder.conv_in.weight") and len(shapes[key]) == 4:
            channels = shapes[key][1]
            return ("vae" if channels == 16 else "other_vae"), key[: -len("decoder.conv_in.weight")], channels
    return None


def vae_latent_channels(path: Path) -> int | None:
    """The latent channels of a VAE file in LDM names (`decoder.conv_in` input width), None when it is not one
    (or cannot be read)."""
    try:
        found = _file_kind(_header_shapes(Path(path)))
    except (OSError, ValueError):
        return None
    return found[2] if found is not None and found[0] in ("vae", "other_vae") else None


COMPONENT_NAMES = {"clip": "CLIP-L text encoder", "t5": "T5 text encoder", "vae": "16-channel Flux VAE"}


def selected_components(files: Iterable[Path]) -> dict[str, tuple[Path, str]]:
    """{"clip"|"t5"|"vae": (file, key prefix)} of the files picked in "VAE / Text Encoder"
    (`forge_additional_modules`). FluxLoadError naming the file when one cannot be read, is none of the three
    kinds (a 4-channel SD VAE, a LoRA, ...), or is a second file of a kind already picked."""
    found: dict[str, tuple[Path, str]] = {}
    for file in files:
        file = Path(file)
        try:
            kind = _file_kind(_header_shapes(file))
        except (OSError, ValueError) as exc:
            raise FluxLoadError(f"VAE / Text Encoder: {file.name} cannot be read ({exc})") from exc
        if kind is not None and kind[0] == "other_vae":
            raise FluxLoadError(f"VAE / Text Encoder: {file.name} is a {kind[2]}-channel VAE (SD 1/2/XL); Flux needs "
                                "the 16-channel VAE (ae.safetensors)")
        if kind is None:
            raise FluxLoadError(f"VAE / Text Encoder: {file.name} is not a CLIP-L or T5 text encoder or a "
                                "16-channel Flux VAE")
        if kind[0] in found:
            raise FluxLoadError(f"VAE / Text Encoder: {found[kind[0]][0].name} and {file.name} are both a "
                                f"{COMPONENT_NAMES[kind[0]]}; select one")
        found[kind[0]] = (file, kind[1])
    return found


def find_component_files(models_dir: Path | None) -> dict[str, tuple[Path, str]]:
    """{"clip"|"t5"|"vae": (file, key prefix)}: the first fitting `.safetensors` (by name) in `models/text_encoder/`
    and `models/VAE/` (the automatic choice, for the kinds nothing was selected for)."""
    found: dict[str, tuple[Path, str]] = {}
    if models_dir is None:
        return found
    for folder in (Path(models_dir) / TEXT_ENCODER_DIR, Path(models_dir) / VAE_DIR):
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob("*.safetensors")):
            try:
                kind = _kind_of(_header_shapes(file))
            except (OSError, ValueError) as exc:
                log.warning("%s: skipped (%s)", file, exc)
                continue
            if kind is not None and kind[0] not in found:
                found[kind[0]] = (file, kind[1])
    return found


def find_t5_tokenizer(models_dir: Path | None) -> Path | None:
    """The first folder under `models/text_encoder/` with a `tokenizer.json` (T5's tokenizer), or None."""
    if models_dir is None or not (Path(models_dir) / TEXT_ENCODER_DIR).is_dir():
        return None
    found = sorted((Path(models_dir) / TEXT_ENCODER_DIR).rglob("tokenizer.json"))
    return found[0].parent if found else None


def load_tokenizers(config: Mapping[str, Any], clip_folder: Path | None, t5_folder: Path | None) -> list[Any]:
    """[CLIP tokenizer, T5 tokenizer]: CLIP's from the folder when given, else the bundled CLIP BPE; T5's from its
    folder (there is no bundled T5 vocabulary)."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    from modules.tokenizer import CLIP_L_PAD, SDClipTokenizer, build_clip_tokenizer  # noqa: PLC0415

    if clip_folder is not None and (clip_folder / "tokenizer_config.json").is_file():
        clip = SDClipTokenizer.from_pretrained(clip_folder, local_files_only=True)
    else:
        clip = build_clip_tokenizer(CLIP_L_PAD)
    if t5_folder is None:
        raise FluxLoadError("Flux needs T5's tokenizer: copy the `tokenizer_2/` folder of the FLUX.1 diffusers "
                            f"repository (with its tokenizer.json) into models/{TEXT_ENCODER_DIR}/")
    try:
        t5 = AutoTokenizer.from_pretrained(t5_folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FluxLoadError(f"{t5_folder}: cannot load the T5 tokenizer ({exc})") from exc
    t5.model_max_length = int(config.get("t5_max_length", 512))
    return [clip, t5]


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------

def _read(path: Path) -> dict[str, torch.Tensor]:
    from modules.sd_models import read_state_dict  # noqa: PLC0415

    return read_state_dict(path)[0]


def _header_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors as meta tensors (names, shapes and dtypes from the header; nothing read)."""
    from modules.safetensors_header import read_header  # noqa: PLC0415

    return {key: torch.empty(entry["shape"], dtype=pristine_weights.TORCH_DTYPES.get(entry["dtype"], torch.uint8),
                             device="meta") for key, entry in read_header(path).items() if key != "__metadata__"}


def _component_states(path: Path, state: dict[str, torch.Tensor], prefix: str, models_dir: Path | None,
                      selected: Iterable[Path] = (), read: Any = _read
                      ) -> tuple[dict[str, Any], dict[str, tuple[Path, str, Mapping[str, torch.Tensor]]]]:
    """The config and {"clip"|"t5"|"vae": (file, prefix, tensors)} for a transformer file and its companions: the
    `selected` files first (for their kind, over bundled ones), then the file's bundled parts, then the first
    fitting file of `models/text_encoder/` / `models/VAE/`. The load log names each file and why it was used.
    Companion files are read with `read`: their tensors, or `_header_tensors` for a layout."""
    sources: dict[str, tuple[Path, str, Mapping[str, torch.Tensor]]] = {}
    for kind, (file, file_prefix) in selected_components(selected).items():
        log.info("Flux %s from %s (selected in VAE / Text Encoder)", kind, file)
        sources[kind] = (file, file_prefix, read(file))
    if prefix == COMFY_PREFIX:
        if "vae" not in sources and any(k.startswith(BUNDLED_VAE_PREFIX) for k in state):
            sources["vae"] = (path, BUNDLED_VAE_PREFIX, state)
        for kind, text_prefix in BUNDLED_TEXT_PREFIXES.items():
            if kind not in sources and any(k.startswith(text_prefix) for k in state):
                sources[kind] = (path, text_prefix, state)
    missing = [kind for kind in ("clip", "t5", "vae") if kind not in sources]
    if missing:
        files = find_component_files(models_dir)
        for kind in missing:
            if kind not in files:
                folder = VAE_DIR if kind == "vae" else TEXT_ENCODER_DIR
                what = {"clip": "CLIP-L text encoder (clip_l.safetensors)", "t5": "T5-XXL text encoder "
                        "(t5xxl_fp16.safetensors)", "vae": "16-channel Flux VAE (ae.safetensors)"}[kind]
                raise FluxLoadError(f"{path}: Flux transformer without a {what}; put one in models/{folder}/")
            file, file_prefix = files[kind]
            log.info("Flux %s from %s (first fitting file of models/%s)", kind, file,
                     VAE_DIR if kind == "vae" else TEXT_ENCODER_DIR)
            sources[kind] = (file, file_prefix, read(file))
    config = base_config()
    config["transformer"] = infer_transformer_config(state, prefix, config["transformer"])
    clip_file, clip_prefix, clip_state = sources["clip"]
    body = clip_prefix + ("text_model." if any(k.startswith(clip_prefix + "text_model.") for k in clip_state) else "")
    config["clip"]["config"] = model_configs.infer_clip_config(clip_state, body, config["clip"]["config"])
    config["t5"]["config"] = infer_t5_config(sources["t5"][2], sources["t5"][1], config["t5"]["config"])
    vae_file, vae_prefix, vae_state = sources["vae"]
    config["vae"] = model_configs.infer_vae_config(vae_state, vae_prefix, config["vae"])
    transformer = config["transformer"]
    for kind, width, needed, what in (
            ("clip", config["clip"]["config"].get("hidden_size"), transformer["pooled_projection_dim"], "pooled"),
            ("t5", config["t5"]["config"].get("d_model"), transformer["joint_attention_dim"], "text")):
        if width is not None and int(width) != int(needed):
            raise FluxLoadError(f"{sources[kind][0].name}: a {COMPONENT_NAMES[kind]} of width {width}, but "
                                f"{path.name} takes {what} features of width {needed} (CLIP-G or another model's "
                                "encoder?)")
    return config, sources


def _text_key_map(param_shapes: Mapping[str, tuple[int, ...]], component: str, prefix: str,
                  state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """{"text_encoders.i.<param>": file key}: transformers names under `prefix`, with or without `text_model.`."""
    key_map = {}
    for param in param_shapes:
        candidates = [prefix + param, prefix + param.removeprefix("text_model."), prefix + "text_model." + param]
        found = next((c for c in candidates if c in state), None)
        if found is None and param == "encoder.embed_tokens.weight":  # tied to `shared.weight` (often not saved)
            found = prefix + "shared.weight"
        if found is not None:
            key_map[f"{component}.{param}"] = found
    return key_map


def _single_file_plan(path: Path, state: dict[str, torch.Tensor], prefix: str, models_dir: Path | None,
                      selected: Iterable[Path] = (), read: Any = _read
                      ) -> tuple[dict[str, Any], dict[str, torch.nn.Module], dict[str, Any], dict[str, dict[str, str]],
                                 dict[str, dict[str, Any]], dict[str, Any]]:
    """(config, modules on meta, parameter shapes, key maps per component, transforms, {component: (file,
    tensors)}) of a BFL/ComfyUI transformer file and its companions (see `_component_states`): all but the weights."""
    config, sources = _component_states(path, state, prefix, models_dir, selected, read)
    modules = build_modules(config, empty=True)
    shapes = {name: _param_shapes(m) for name, m in modules.items()}
    key_map, transforms = bfl_key_map(config["transformer"], shapes["unet"], prefix)
    vae_map, vae_transforms = checkpoint_convert.vae_key_map(config["vae"], shapes["vae"], sources["vae"][1])
    transforms.update(vae_transforms)
    files = {"unet": (path, state), "vae": (sources["vae"][0], sources["vae"][2])}
    maps = {"unet": key_map, "vae": vae_map}
    for index, kind in enumerate(("clip", "t5")):
        component = f"text_encoders.{index}"
        file, text_prefix, text_state = sources[kind]
        maps[component] = _text_key_map(shapes[component], component, text_prefix, text_state)
        files[component] = (file, text_state)
    return config, modules, shapes, maps, transforms, files


def load_layout(info: CheckpointInfo, state: dict[str, torch.Tensor], prefix: str,
                models_dir: Path | None = None) -> LoadedModel:
    """The Flux model of a BFL/ComfyUI transformer file with every parameter on the meta device (`state`: the
    file's tensors as meta tensors): names, shapes, key map (file keys of this file and of the companions it
    needs) and config, nothing read but headers. The merge tool resolves LoRA keys against it and streams the file."""
    path = Path(info.path)
    config, modules, _, maps, transforms, files = _single_file_plan(path, state, prefix, models_dir,
                                                                    read=_header_tensors)
    special = {"transforms": transforms, "source": str(path), "flux_files": {c: str(f) for c, (f, _) in files.items()}}
    all_maps = {k: v for component, m in maps.items() if Path(files[component][0]) == path for k, v in m.items()}
    return _loaded(info, config, modules, [], torch.device("meta"), torch.float32, key_map=all_maps, special=special)


def load_single_file(info: CheckpointInfo, state: dict[str, torch.Tensor], prefix: str, device: torch.device,
                     dtype: torch.dtype, models_dir: Path | None, selected: Iterable[Path] = ()) -> LoadedModel:
    """A Flux model from a BFL/ComfyUI transformer file (`state`, keys under `prefix`) plus its companions
    (`selected`: the files picked in "VAE / Text Encoder", see `_component_states`)."""
    from modules.sd_models import _assign, _finish, _map_pristine  # noqa: PLC0415

    path = Path(info.path)
    config, modules, shapes, maps, transforms, files = _single_file_plan(path, state, prefix, models_dir, selected)
    for component, module in modules.items():
        file, tensors = files[component]
        part = {}
        for model_key, file_key in maps[component].items():
            if file_key not in tensors:
                raise FluxLoadError(f"{file}: lacks tensor {file_key!r} (needed for {model_key})")
            param = model_key[len(component) + 1:]
            value = checkpoint_convert.ldm_tensor_to_model(tensors[file_key], transforms.get(model_key),
                                                           shapes[component][param])
            if tuple(value.shape) != shapes[component][param]:
                raise FluxLoadError(f"{file}: tensor {file_key!r} has shape {tuple(tensors[file_key].shape)}, "
                                    f"which does not give {model_key} its shape {shapes[component][param]}")
            part[param] = value
        _assign(module, part, component, Path(file))
        _finish(module, device, flux_dtype(device, dtype))
    if id(modules["text_encoders.1"].shared.weight) != id(modules["text_encoders.1"].encoder.embed_tokens.weight):
        modules["text_encoders.1"].encoder.embed_tokens.weight = modules["text_encoders.1"].shared.weight

    flat_shapes = {f"{c}.{k}": s for c, part_shapes in shapes.items() for k, s in part_shapes.items()}

    def pristine() -> pristine_weights.PristineWeights:
        weights = pristine_weights.PristineWeights()
        mapped: dict[Path, pristine_weights.MappedSafetensors] = {}
        for component, (file, _tensors) in files.items():
            if Path(file).suffix.lower() != ".safetensors":
                continue
            handle = mapped.setdefault(Path(file), pristine_weights.MappedSafetensors(file))
            for model_key, file_key in maps[component].items():
                weights.add(model_key, handle, file_key, flat_shapes[model_key], transforms.get(model_key))
        return weights

    all_maps = {k: v for m in maps.values() for k, v in m.items()}
    special = {"transforms": transforms, "source": str(path), "flux_files": {c: str(f) for c, (f, _) in files.items()}}
    t5_tokenizer = find_t5_tokenizer(models_dir)
    sources = _map_pristine(pristine)
    if sources is not None:  # every parameter is its file tensor, transformed and cast the way a view is
        sources.mark_loaded(modules)
    return _loaded(info, config, modules, load_tokenizers(config, None, t5_tokenizer), device, dtype,
                   key_map=all_maps, special=special, pristine=sources)


def module_files(model: LoadedModel) -> list[Path]:
    """The files a Flux single file took its VAE, CLIP-L and T5 from (in that order), other than itself: what the
    infotext names as Forge's `Module 1`, `Module 2`, ... (none for a bundled checkpoint or a diffusers folder)."""
    files = model.key_map_special.get("flux_files") or {}
    source = model.key_map_special.get("source")
    out: list[Path] = []
    for component in ("vae", "text_encoders.0", "text_encoders.1"):
        file = files.get(component)
        if file and file != source and Path(file) not in out:
            out.append(Path(file))
    return out


def flux_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """float32 on CPU (half-precision matmuls are slow there); elsewhere bfloat16 for a requested float16 (Flux's
    activations overflow float16), else the requested dtype."""
    if device.type == "cpu":
        return torch.float32
    return torch.bfloat16 if dtype == torch.float16 else dtype


def load_diffusers_folder(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A Flux diffusers folder, offline: `transformer/`, `vae/`, `text_encoder/` (CLIP-L), `text_encoder_2/` (T5)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel  # noqa: PLC0415
    from transformers import CLIPTextModel, T5EncoderModel  # noqa: PLC0415

    from modules.sd_models import _finish, _map_pristine  # noqa: PLC0415

    path = Path(info.path)
    for needed in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        if not (path / needed / "config.json").is_file():
            raise FluxLoadError(f"{path}: Flux diffusers folder has no {needed}/config.json")
    layout = device.type == "meta"  # `sd_models.load_layout`: modules built from their configs, no weights read

    def component(cls: Any, folder: str) -> torch.nn.Module:
        return model_configs.folder_component(cls, path / folder, layout)

    try:
        modules = {"unet": component(FluxTransformer2DModel, "transformer"), "vae": component(AutoencoderKL, "vae"),
                   "text_encoders.0": component(CLIPTextModel, "text_encoder"),
                   "text_encoders.1": component(T5EncoderModel, "text_encoder_2")}
    except (OSError, ValueError, RuntimeError) as exc:
        raise FluxLoadError(f"{path}: cannot load Flux diffusers folder ({type(exc).__name__}: {exc})") from exc
    config = base_config()
    config["transformer"] = dict(modules["unet"].config)
    if layout:
        for module in modules.values():
            module.eval().requires_grad_(False)
        return _loaded(info, config, modules, [], device, torch.float32)
    target = flux_dtype(device, dtype)
    for module in modules.values():
        _finish(module, device, target)
    scheduler_file = path / "scheduler" / "scheduler_config.json"
    tokenizers = load_tokenizers(config, path / "tokenizer", path / "tokenizer_2")
    folders = {"unet": "transformer", "vae": "vae", "text_encoders.0": "text_encoder", "text_encoders.1": "text_encoder_2"}
    parts = {name: (path / folders[name], module) for name, module in modules.items()}
    sources = _map_pristine(lambda: pristine_weights.for_diffusers_folder(parts))
    if sources is not None:  # from_pretrained chose the files: compared once here, while they are in the page cache
        sources.mark_loaded(modules, compare=True)
    model = _loaded(info, config, modules, tokenizers, device, dtype, pristine=sources)
    if scheduler_file.is_file():
        import json  # noqa: PLC0415

        shipped = json.loads(scheduler_file.read_text(encoding="utf-8"))
        model.scheduler_config.update({k: v for k, v in shipped.items() if k in model.scheduler_config})
    return model


def _loaded(info: CheckpointInfo, config: Mapping[str, Any], modules: Mapping[str, torch.nn.Module],
            tokenizers: list[Any], device: torch.device, dtype: torch.dtype, key_map: dict[str, str] | None = None,
            special: dict[str, Any] | None = None, pristine: Any = None) -> LoadedModel:
    transformer_config = dict(modules["unet"].config)
    return LoadedModel(
        family=FLUX, unet=modules["unet"], vae=modules["vae"],
        text_encoders=[modules["text_encoders.0"], modules["text_encoders.1"]], tokenizers=tokenizers,
        prediction_type="flow", scheduler_config=scheduler_config({**config, "transformer": transformer_config}),
        checkpoint=info, device=device, dtype=flux_dtype(device, dtype), key_map=key_map or {},
        key_map_special=special or {}, ldm_unet_names={}, pristine=pristine)
