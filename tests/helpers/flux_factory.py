"""Tiny Flux.1 test models built from `modules/model_configs/tiny-flux.json`, written as the files people have.

* `build_tiny_flux(seed=0, guidance=True)` -> {"config", "unet", "vae", "text_encoders.0", "text_encoders.1"}
  (FluxTransformer2DModel with 2 double and 2 single blocks, tiny CLIP-L and T5, 16-channel AutoencoderKL).
* `write_diffusers_folder(path, seed)`: `transformer/`, `vae/`, `text_encoder[_2]/`, `tokenizer[_2]/`,
  `scheduler/`, `model_index.json` (all by `save_pretrained`).
* `write_bfl_file(path, seed, comfy=False, bundled=False)`: the transformer in BFL names (ComfyUI's
  `model.diffusion_model.` prefix with `comfy`; plus `vae.` and `text_encoders.*` with `bundled`).
* `write_picker_models(models_dir)`: the models folder of the "VAE / Text Encoder" tests: a tiny Flux BFL file and a
  tiny SD1 checkpoint in `Stable-diffusion/`, the companions, and a second Flux VAE `VAE/ae2.safetensors`.
* `write_companions(models_dir, seed)`: `text_encoder/clip_l.safetensors`, `text_encoder/t5xxl.safetensors`,
  `text_encoder/t5_tokenizer/`, `VAE/ae.safetensors` (Forge's folders).
* `write_vae_file(path, seed)`: the seed's 16-channel VAE alone, in BFL's `ae.safetensors` (LDM) names.

Same seed -> bitwise identical weights in every layout.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from modules import checkpoint_convert, flux_model
from modules.safetensors_header import write_safetensors
from modules.tokenizer import CLIP_L_PAD, build_clip_tokenizer

NOISE = 0.02
T5_WORDS = ("a photo of the cat dog red blue green house tree sky sun moon car man woman girl boy city night day "
            "forest river mountain painting portrait style art light dark big small old new happy sad fire water "
            "snow flower bird fish horse castle robot space star ocean road street window door book table").split()


@lru_cache(maxsize=4)
def _weights(seed: int, guidance: bool) -> dict[str, dict[str, torch.Tensor]]:
    config = flux_model.base_config(tiny=True)
    config["transformer"]["guidance_embeds"] = guidance
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = flux_model.build_modules(config)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in modules.items():
        state = {}
        for key, tensor in sorted(module.state_dict().items()):
            if tensor.is_floating_point():
                tensor = tensor + torch.randn(tensor.shape, generator=generator) * NOISE
            state[key] = tensor
        if name == "text_encoders.1":
            state["encoder.embed_tokens.weight"] = state["shared.weight"]
        out[name] = state
    return out


def build_tiny_flux(seed: int = 0, guidance: bool = True) -> dict[str, Any]:
    """Fresh modules with the seeded tiny weights (float32, CPU, eval mode) and their "config"."""
    config = flux_model.base_config(tiny=True)
    config["transformer"]["guidance_embeds"] = guidance
    modules = flux_model.build_modules(config, empty=True)
    for name, module in modules.items():
        module.load_state_dict({k: v.clone() for k, v in _weights(seed, guidance)[name].items()}, assign=True)
        module.eval().requires_grad_(False)
    t5 = modules["text_encoders.1"]
    t5.encoder.embed_tokens.weight = t5.shared.weight
    return {"config": config, **modules}


def write_t5_tokenizer(folder: Path) -> Path:
    """A tiny word-level T5-style tokenizer (`<pad>`=0, `</s>`=1 appended, `<unk>`=2) saved with `tokenizer.json`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(T5_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    wrapped.save_pretrained(folder)
    return Path(folder)


def write_diffusers_folder(path: str | Path, seed: int = 0, guidance: bool = True) -> Path:
    """The tiny Flux as a diffusers folder."""
    path = Path(path)
    built = build_tiny_flux(seed, guidance)
    built["unet"].save_pretrained(path / "transformer", safe_serialization=True)
    built["vae"].save_pretrained(path / "vae", safe_serialization=True)
    built["text_encoders.0"].save_pretrained(path / "text_encoder", safe_serialization=True)
    built["text_encoders.1"].save_pretrained(path / "text_encoder_2", safe_serialization=True)
    build_clip_tokenizer(CLIP_L_PAD).save_pretrained(path / "tokenizer")
    write_t5_tokenizer(path / "tokenizer_2")
    schedule = flux_model.scheduler_config(built["config"])
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", **schedule}), encoding="utf-8")
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
             "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "tokenizer_2": ["transformers", "T5TokenizerFast"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    (path / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return path


def bfl_state_dict(built: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The transformer's weights under BFL names (our config-derived map, `flux_model.bfl_key_map`)."""
    transformer = built["unet"]
    key_map, transforms = flux_model.bfl_key_map(built["config"]["transformer"], transformer.state_dict(), prefix)
    return checkpoint_convert.diffusers_to_ldm({"unet": transformer}, key_map, {"transforms": transforms})


def vae_ldm_state_dict(built: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """The VAE's weights under LDM names (BFL's `ae.safetensors` layout) under `prefix`."""
    vae = built["vae"]
    shapes = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    key_map, transforms = checkpoint_convert.vae_key_map(built["config"]["vae"], shapes, prefix)
    return checkpoint_convert.diffusers_to_ldm({"vae": vae}, key_map, {"transforms": transforms})


def _text_states(built: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    clip = dict(built["text_encoders.0"].state_dict())
    clip = {("text_model." + k if not k.startswith("text_model.") else k): v.contiguous() for k, v in clip.items()}
    t5 = {k: v.contiguous() for k, v in built["text_encoders.1"].state_dict().items()
          if k != "encoder.embed_tokens.weight"}
    return clip, t5


def write_bfl_file(path: str | Path, seed: int = 0, comfy: bool = False, bundled: bool = False,
                   guidance: bool = True) -> Path:
    """The tiny Flux transformer as a BFL single file (see the module docstring)."""
    built = build_tiny_flux(seed, guidance)
    state = bfl_state_dict(built, flux_model.COMFY_PREFIX if comfy or bundled else "")
    if bundled:
        state.update(vae_ldm_state_dict(built, flux_model.BUNDLED_VAE_PREFIX))
        clip, t5 = _text_states(built)
        state.update({flux_model.BUNDLED_TEXT_PREFIXES["clip"] + k: v for k, v in clip.items()})
        state.update({flux_model.BUNDLED_TEXT_PREFIXES["t5"] + k: v for k, v in t5.items()})
    write_safetensors(Path(path), {k: v.contiguous() for k, v in state.items()}, {"format": "pt"})
    return Path(path)


def write_companions(models_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """CLIP-L, T5 (+ its tokenizer) and the VAE as stand-alone files in Forge's folders under `models_dir`."""
    models_dir = Path(models_dir)
    built = build_tiny_flux(seed)
    clip, t5 = _text_states(built)
    files = {"clip": models_dir / "text_encoder" / "clip_l.safetensors",
             "t5": models_dir / "text_encoder" / "t5xxl_fp16.safetensors", "vae": models_dir / "VAE" / "ae.safetensors"}
    for file in files.values():
        file.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(files["clip"], clip, {"format": "pt"})
    write_safetensors(files["t5"], t5, {"format": "pt"})
    write_vae_file(files["vae"], seed)
    files["t5_tokenizer"] = write_t5_tokenizer(models_dir / "text_encoder" / "t5_tokenizer")
    return files


def write_vae_file(path: str | Path, seed: int = 0) -> Path:
    """The tiny Flux VAE of `seed` as a stand-alone `ae.safetensors`-style file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vae = vae_ldm_state_dict(build_tiny_flux(seed))
    write_safetensors(path, {k: v.contiguous() for k, v in vae.items()}, {"format": "pt"})
    return path


def tiny_flux_model(seed: int = 0, guidance: bool = True) -> Any:
    """A `LoadedModel` of the tiny Flux built in memory (float32, CPU), as the host loads it."""
    from modules.sd_model_types import CheckpointInfo, LoadedModel  # noqa: PLC0415

    built = build_tiny_flux(seed, guidance)
    return LoadedModel(
        family="Flux", unet=built["unet"], vae=built["vae"],
        text_encoders=[built["text_encoders.0"], built["text_encoders.1"]], tokenizers=[],
        prediction_type="flow", scheduler_config=flux_model.scheduler_config(built["config"]),
        checkpoint=CheckpointInfo(path=Path("tiny-flux.safetensors"), name="tiny-flux", format="single-file"),
        device=torch.device("cpu"), dtype=torch.float32)


def bfl_linear_modules(model: Any) -> dict[str, int]:
    """{BFL module name: output rows} of every Linear of the transformer under its BFL name (fused ones once)."""
    names = flux_model.bfl_module_map(model.unet.config)
    rows: dict[str, int] = {}
    for path, target in names.items():
        module = model.unet.get_submodule(path)
        if not isinstance(module, torch.nn.Linear):
            continue
        if isinstance(target, tuple):
            rows[target[0]] = max(rows.get(target[0], 0), target[2])
        else:
            rows[target] = module.weight.shape[0]
    return rows


def write_picker_models(models_dir: str | Path) -> Path:
    """The models folder the "VAE / Text Encoder" tests share (see the module docstring); returns it."""
    from tests.helpers.model_factory import write_single_file  # noqa: PLC0415

    models_dir = Path(models_dir)
    checkpoints = models_dir / "Stable-diffusion"
    checkpoints.mkdir(parents=True, exist_ok=True)
    write_bfl_file(checkpoints / "tiny-flux-bfl.safetensors", seed=2)
    write_single_file(checkpoints / "sd1.safetensors", "SD1", seed=0)
    write_companions(models_dir, seed=2)
    write_vae_file(models_dir / "VAE" / "ae2.safetensors", seed=5)
    return models_dir
