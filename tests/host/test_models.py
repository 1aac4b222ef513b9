"""Model loading: tiny SD1/SD2/SDXL single files and diffusers folders, name conversion, manager behaviour."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers.loaders import single_file_utils as dsf
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from modules import checkpoint_convert as cc
from modules import model_configs, tiny_models
from modules.cache import DiskCache
from modules.embedded_default import DEFAULT_NAME, DEFAULT_SEED, ensure_embedded_default
from modules.host import WebUI
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import ModelLoadError, load_checkpoint, read_state_dict, scan_checkpoints
from tests.helpers.model_factory import (
    FAMILIES,
    build_tiny_components,
    tiny_config,
    write_diffusers_folder,
    write_single_file,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny single file per family (seed 3), written once for the module."""
    root = tmp_path_factory.mktemp("ckpts")
    return {family: write_single_file(root / f"tiny-{family.lower()}.safetensors", family, seed=3) for family in FAMILIES}


def _single(path: Path) -> CheckpointInfo:
    return CheckpointInfo(path=path, name=path.name, format="single-file")


def _params(model) -> dict[str, torch.Tensor]:
    out = {}
    for prefix, module in model.torch_modules().items():
        out.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return out


# ---------------------------------------------------------------------------------------------------------------
# Loading and conversion per family
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_single_file_loads_with_detected_family_and_shapes(files: dict[str, Path], family: str) -> None:
    model = load_checkpoint(_single(files[family]), CPU, torch.float32)
    tiny = tiny_config(family)
    assert model.family == family
    assert model.unet.config.block_out_channels == tuple(tiny["unet"]["block_out_channels"]) or \
        list(model.unet.config.block_out_channels) == tiny["unet"]["block_out_channels"]
    assert model.unet.conv_in.weight.shape == (tiny["unet"]["block_out_channels"][0], 4, 3, 3)
    assert len(model.text_encoders) == (2 if family == "SDXL" else 1)
    assert len(model.tokenizers) == len(model.text_encoders)
    assert model.text_encoders[0].get_input_embeddings().weight.shape == (49408, 32)
    assert model.prediction_type == "epsilon"
    assert model.scheduler_config["beta_schedule"] == "scaled_linear"
    assert model.scheduler_config["num_train_timesteps"] == 1000
    assert (model.scheduler_config["beta_start"], model.scheduler_config["beta_end"]) == (0.00085, 0.012)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.unet.parameters())
    assert not model.is_inpainting
    # every parameter of every component is named in key_map
    assert set(model.key_map) == set(_params(model))
    if family == "SDXL":
        assert model.unet.config.addition_embed_type == "text_time"
        assert model.unet.config.projection_class_embeddings_input_dim == 80
        assert type(model.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
        assert model.tokenizers[1].pad_token == "!" and model.tokenizers[0].pad_token == "<|endoftext|>"


@pytest.mark.parametrize("family", FAMILIES)
def test_conversion_equals_diffusers_own_converters(files: dict[str, Path], family: str) -> None:
    state = load_file(str(files[family]))
    config = model_configs.infer_family_config(state, family)
    ours, _, _ = cc.ldm_to_diffusers(state, family, config)

    def same(name: str, mine: dict, theirs: dict) -> None:
        assert sorted(mine) == sorted(theirs), f"{name}: key sets differ: {sorted(set(mine) ^ set(theirs))[:5]}"
        different = [k for k in mine if not torch.equal(mine[k], theirs[k])]
        assert not different, f"{name}: values differ at {different[:5]}"

    same("unet", ours["unet"], dsf.convert_ldm_unet_checkpoint(state, config["unet"]))
    same("vae", ours["vae"], dsf.convert_ldm_vae_checkpoint(state, config["vae"]))
    # transformers 5: CLIPTextModel parameters have no "text_model." prefix; position_ids is a buffer, not a weight
    if family in ("SD1", "SDXL"):
        clip = {k.removeprefix("text_model."): v for k, v in dsf.convert_ldm_clip_checkpoint(state).items()
                if not k.endswith("position_ids")}
        same("clip-l", ours["text_encoders.0"], clip)
    if family == "SD2":
        encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoders"][0]["config"]))
        open_clip = {k.removeprefix("text_model."): v for k, v in dsf.convert_open_clip_checkpoint(encoder, state).items()}
        same("open-clip-h", ours["text_encoders.0"], open_clip)
    if family == "SDXL":
        encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoders"][1]["config"]))
        big_g = dsf.convert_open_clip_checkpoint(encoder, state, prefix="conditioner.embedders.1.model.")
        same("open-clip-bigg", ours["text_encoders.1"], big_g)


@pytest.mark.parametrize("family", ["SD1", "SD2", "SDXL"])
def test_real_size_unet_names_equal_diffusers_converter(family: str) -> None:
    """Full-size SD1.5/SD2/SDXL UNet names (meta device, scalar stand-ins) map exactly as diffusers maps them."""
    config = model_configs.family_config(family)
    shapes = model_configs.meta_param_shapes({**config, "vae": model_configs.family_config(family, tiny=True)["vae"],
                                              "text_encoders": tiny_config(family)["text_encoders"]})
    key_map, _ = cc.build_key_map(family, config, shapes)
    unet_keys = {k: v for k, v in key_map.items() if k.startswith("unet.")}
    ldm = {ldm_key: torch.tensor(float(i)) for i, ldm_key in enumerate(unet_keys.values())}
    theirs = dsf.convert_ldm_unet_checkpoint(ldm, config["unet"])
    assert len(theirs) == len(unet_keys)
    for i, model_key in enumerate(unet_keys):
        assert float(theirs[model_key.removeprefix("unet.")]) == float(i), model_key


@pytest.mark.parametrize(("family", "dtype"), [("SD1", torch.float32), ("SD2", torch.float32),
                                               ("SDXL", torch.float32), ("SDXL", torch.float16)])
def test_single_file_to_components_and_back_is_bitwise(tmp_path: Path, family: str, dtype: torch.dtype) -> None:
    path = write_single_file(tmp_path / "m.safetensors", family, seed=3, dtype=dtype)
    original = load_file(str(path))
    config = model_configs.infer_family_config(original, family)
    components, key_map, special = cc.ldm_to_diffusers(original, family, config)
    back = cc.diffusers_to_ldm(components, key_map, special)
    assert list(back) == list(original)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key
    # through the loaded (float32) model: same keys, dtypes and bytes
    model = load_checkpoint(_single(path), CPU, torch.float32)
    rebuilt = cc.diffusers_to_ldm(model.torch_modules(), model.key_map, model.key_map_special)
    assert list(rebuilt) == list(original)
    assert all(rebuilt[k].dtype == original[k].dtype and torch.equal(rebuilt[k], original[k]) for k in original)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_and_diffusers_folder_load_identical_parameters(tmp_path: Path, family: str) -> None:
    single = write_single_file(tmp_path / "m.safetensors", family, seed=3)
    folder = write_diffusers_folder(tmp_path / "m-diffusers", family, seed=3)
    assert (folder / "model_index.json").is_file() and (folder / "scheduler" / "scheduler_config.json").is_file()
    a = load_checkpoint(_single(single), CPU, torch.float32)
    b = load_checkpoint(CheckpointInfo(path=folder, name=folder.name, format="diffusers"), CPU, torch.float32)
    assert b.family == family and b.prediction_type == "epsilon"
    pa, pb = _params(a), _params(b)
    assert sorted(pa) == sorted(pb)
    assert [k for k in pa if not torch.equal(pa[k], pb[k])] == []
    assert a.ldm_unet_names == b.ldm_unet_names
    assert a.tokenizers[0]("a cat").input_ids == b.tokenizers[0]("a cat").input_ids
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        decoded = [m.vae.decode(latents).sample for m in (a, b)]
    assert decoded[0].shape == (1, 3, 128, 128) and torch.equal(decoded[0], decoded[1])


def test_builder_is_deterministic_and_tensors_distinct() -> None:
    a = build_tiny_components("SD1", seed=3)
    b = build_tiny_components("SD1", seed=3)
    other_seed = tiny_models._seeded_weights("SD1", DEFAULT_SEED, False)
    fresh = tiny_models._seeded_weights.__wrapped__("SD1", 3, False)  # recomputed, not the per-process cache
    wa, wb = a["unet"].conv_in.weight, b["unet"].conv_in.weight
    assert torch.equal(wa, wb) and wa.data_ptr() != wb.data_ptr()  # same values, separate tensors
    assert not torch.equal(wa, other_seed["unet"]["conv_in.weight"])
    assert all(torch.equal(v, a["unet"].state_dict()[k]) for k, v in fresh["unet"].items())
    norm = a["unet"].down_blocks[0].resnets[0].norm1.weight
    assert not torch.equal(norm, torch.ones_like(norm))  # noise added: no two tensors alike


# ---------------------------------------------------------------------------------------------------------------
# Names derived from the config
# ---------------------------------------------------------------------------------------------------------------

def test_unet_block_structure_and_names_follow_the_config() -> None:
    sd1 = cc.unet_ldm_module_map(model_configs.family_config("SD1")["unet"])
    assert sd1["down_blocks.0.attentions.0.proj_in"] == "input_blocks.1.1.proj_in"
    assert sd1["down_blocks.0.resnets.0.conv1"] == "input_blocks.1.0.in_layers.2"
    assert sd1["down_blocks.1.resnets.0.conv_shortcut"] == "input_blocks.4.0.skip_connection"
    assert sd1["down_blocks.2.downsamplers.0.conv"] == "input_blocks.9.0.op"
    assert sd1["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.1.conv"  # no attention in the level
    assert sd1["up_blocks.1.upsamplers.0.conv"] == "output_blocks.5.2.conv"  # after an attention
    assert sd1["mid_block.attentions.0.transformer_blocks.0.attn2.to_k"] == "middle_block.1.transformer_blocks.0.attn2.to_k"
    assert sd1["time_embedding.linear_2"] == "time_embed.2"
    inputs = {v.split(".")[1] for v in sd1.values() if v.startswith("input_blocks.")}
    outputs = {v.split(".")[1] for v in sd1.values() if v.startswith("output_blocks.")}
    assert len(inputs) == 12 and len(outputs) == 12  # A1111's 12 in / 1 mid / 12 out for lbw
    xl = cc.unet_ldm_module_map(model_configs.family_config("SDXL")["unet"])
    assert len({v.split(".")[1] for v in xl.values() if v.startswith("input_blocks.")}) == 9
    assert xl["add_embedding.linear_1"] == "label_emb.0.0"
    assert xl["down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2"] == "input_blocks.8.1.transformer_blocks.9.ff.net.2"
    assert xl["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.2.conv"
    tiny_xl = cc.unet_ldm_module_map(tiny_config("SDXL")["unet"])
    assert "down_blocks.2.attentions.0.transformer_blocks.1.attn1.to_q" in tiny_xl  # depth [1, 1, 2]
    assert "down_blocks.1.attentions.0.transformer_blocks.1.attn1.to_q" not in tiny_xl


def test_detect_family_and_unknown_layout() -> None:
    assert cc.detect_family(["model.diffusion_model.x", "cond_stage_model.transformer.text_model.y"]) == "SD1"
    assert cc.detect_family(["model.diffusion_model.x", "cond_stage_model.model.ln_final.weight"]) == "SD2"
    assert cc.detect_family(["model.diffusion_model.x", "conditioner.embedders.0.transformer.a",
                             "conditioner.embedders.1.model.b"]) == "SDXL"
    with pytest.raises(cc.UnknownModelFamilyError, match="lora_unet_down_blocks_0"):
        cc.detect_family(["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"])


# ---------------------------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------------------------

def test_v_prediction_from_metadata_and_sidecar_yaml(tmp_path: Path) -> None:
    v = load_checkpoint(_single(write_single_file(tmp_path / "v.safetensors", "SD2", seed=3, v_prediction=True)), CPU,
                        torch.float32)
    assert v.prediction_type == "v_prediction" and v.scheduler_config["prediction_type"] == "v_prediction"
    eps_path = write_single_file(tmp_path / "e.safetensors", "SD2", seed=3)
    assert load_checkpoint(_single(eps_path), CPU, torch.float32).prediction_type == "epsilon"
    (tmp_path / "e.yaml").write_text("model:\n  params:\n    parameterization: \"v\"\n", encoding="utf-8")
    assert load_checkpoint(_single(eps_path), CPU, torch.float32).prediction_type == "v_prediction"


def test_inpainting_and_ckpt_format(tmp_path: Path, files: dict[str, Path]) -> None:
    inpaint = load_checkpoint(_single(write_single_file(tmp_path / "i.safetensors", "SD1", seed=3, inpainting=True)), CPU,
                              torch.float32)
    assert inpaint.is_inpainting and inpaint.unet.conv_in.weight.shape[1] == 9
    ckpt = write_single_file(tmp_path / "c.ckpt", "SD1", seed=3)  # same weights as files["SD1"], pickled
    assert set(torch.load(ckpt, weights_only=True)) == {"state_dict"}
    pa = _params(load_checkpoint(_single(ckpt), CPU, torch.float32))
    pb = _params(load_checkpoint(_single(files["SD1"]), CPU, torch.float32))
    assert sorted(pa) == sorted(pb) and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_fp16_file_loads_as_float32_on_cpu(tmp_path: Path) -> None:
    path = write_single_file(tmp_path / "h.safetensors", "SD1", seed=3, dtype=torch.float16)
    model = load_checkpoint(_single(path), CPU, torch.float16)
    assert model.dtype == torch.float32
    raw = load_file(str(path))
    assert torch.equal(model.unet.conv_in.weight, raw["model.diffusion_model.input_blocks.0.0.weight"].float())


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------

def test_corrupt_truncated_missing_files_raise_clear_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    data = files["SD1"].read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"truncated\.safetensors: truncated or not a safetensors file"):
        read_state_dict(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a model at all, just text" * 3)
    with pytest.raises(ModelLoadError, match=r"garbage\.safetensors: truncated or not a safetensors file"):
        load_checkpoint(_single(garbage), CPU, torch.float32)
    bad_ckpt = tmp_path / "bad.ckpt"
    bad_ckpt.write_bytes(b"\x00\x01garbage")
    with pytest.raises(ModelLoadError, match=r"bad\.ckpt: not a loadable \.ckpt"):
        load_checkpoint(_single(bad_ckpt), CPU, torch.float32)
    with pytest.raises(ModelLoadError, match=r"nowhere\.safetensors: checkpoint file not found"):
        load_checkpoint(_single(tmp_path / "nowhere.safetensors"), CPU, torch.float32)
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(ModelLoadError, match=r"lora\.safetensors: not an SD1/SD2/SDXL single-file checkpoint"):
        load_checkpoint(_single(lora), CPU, torch.float32)
    state = load_file(str(files["SD1"]))
    del state["model.diffusion_model.out.0.bias"]
    broken = tmp_path / "broken.safetensors"
    save_file(state, str(broken))
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors: checkpoint lacks tensor 'model\.diffusion_model\.out\.0\.bias'"):
        load_checkpoint(_single(broken), CPU, torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# Manager, options, embedded default
# ---------------------------------------------------------------------------------------------------------------

def test_manager_lists_finds_loads_switches_and_keeps_model_on_failure(tmp_path: Path, files: dict[str, Path]) -> None:
    webui = WebUI.create(["--data-dir", str(tmp_path)], load_extensions_now=False)
    ckpt_dir = webui.paths.ckpt_dir
    assert (ckpt_dir / DEFAULT_NAME).is_file()  # empty folder: embedded default written
    (ckpt_dir / "sub").mkdir()
    (ckpt_dir / "sub" / "other.safetensors").write_bytes(files["SD1"].read_bytes())
    write_diffusers_folder(ckpt_dir / "folder-model", "SD1", seed=3, with_tokenizers=False)
    (ckpt_dir / "notes.txt").write_text("x", encoding="utf-8")
    (ckpt_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    names = [info.name for info in webui.models.list_checkpoints()]
    assert names == ["broken.safetensors", "folder-model", "sub/other.safetensors", DEFAULT_NAME]

    loaded_events = []
    webui.callbacks.add("model_loaded", loaded_events.append)
    first = webui.models.get()  # the option is empty: the first checkpoint that loads (broken one skipped)
    assert first.checkpoint.name == "folder-model" and first.checkpoint.format == "diffusers"
    assert webui.models.current is first and loaded_events == [first]

    demo = webui.models.load("tiny-sd1-demo")
    assert demo.checkpoint.name == DEFAULT_NAME and demo.checkpoint.sha256 and len(demo.checkpoint.sha256) == 64
    assert webui.options.get("sd_model_checkpoint") == demo.checkpoint.title
    assert webui.models.find(demo.checkpoint.sha256[:10]).name == DEFAULT_NAME
    assert webui.models.find(demo.checkpoint.title).name == DEFAULT_NAME
    assert webui.models.find(str(ckpt_dir / "sub" / "other.safetensors")).name == "sub/other.safetensors"
    assert webui.models.find("no-such-model") is None
    assert webui.models.find("bad\x00name") is None and webui.models.find("") is None

    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        webui.models.load("broken.safetensors")
    assert webui.models.current is demo  # the failed load kept the previous model

    webui.options.set("sd_model_checkpoint", "sub/other.safetensors")
    assert webui.models.current.checkpoint.name == "sub/other.safetensors"
    with pytest.raises(ModelLoadError):
        webui.options.set("sd_model_checkpoint", "broken.safetensors")
    assert webui.models.current.checkpoint.name == "sub/other.safetensors"
    assert webui.options.get("sd_model_checkpoint").startswith("sub/other.safetensors")
    with pytest.raises(ModelLoadError, match="not found"):
        webui.models.load("missing.safetensors")


def test_get_falls_back_to_first_checkpoint_and_errors_when_folder_empty(tmp_path: Path) -> None:
    webui = WebUI.create(["--data-dir", str(tmp_path)], load_extensions_now=False)
    (webui.paths.ckpt_dir / DEFAULT_NAME).unlink()
    with pytest.raises(ModelLoadError, match="no checkpoints found in"):
        webui.models.get()


def test_embedded_default_written_once_and_loadable(tmp_path: Path) -> None:
    class P:
        ckpt_dir = tmp_path / "Stable-diffusion"

    written = ensure_embedded_default(P)
    assert written == P.ckpt_dir / DEFAULT_NAME and written.is_file()
    assert 1_000_000 < written.stat().st_size < 40_000_000
    assert ensure_embedded_default(P) is None
    assert [i.name for i in scan_checkpoints(P.ckpt_dir)] == [DEFAULT_NAME]  # no temporary file left
    model = load_checkpoint(_single(written), CPU, torch.float32)
    assert model.family == "SD1" and model.prediction_type == "epsilon"
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in model.key_map.values())


def test_hash_cached_in_disk_cache(tmp_path: Path, files: dict[str, Path]) -> None:
    from modules.sd_models import HASH_SUBSECTION, checkpoint_sha256  # noqa: PLC0415 - imported where it is needed

    cache = DiskCache(tmp_path / "cache.json")
    value = checkpoint_sha256(files["SD1"], cache)
    import hashlib  # noqa: PLC0415 - imported where it is needed

    assert value == hashlib.sha256(files["SD1"].read_bytes()).hexdigest()
    assert DiskCache(tmp_path / "cache.json").get(HASH_SUBSECTION, files["SD1"]) == value


@pytest.mark.parametrize("family", ["SD1", "SDXL"])
def test_loaded_model_computes_like_the_built_one(files: dict[str, Path], family: str) -> None:
    """Text encoders and UNet of the loaded file give the same outputs as the modules the file was written from."""
    model = load_checkpoint(_single(files[family]), CPU, torch.float32)
    built = build_tiny_components(family, seed=3)
    ids = model.tokenizers[0]("a red fox in the snow", padding="max_length", max_length=77,
                              return_tensors="pt").input_ids
    assert model.text_encoders[0].embeddings.position_ids.tolist()[0][:3] == [0, 1, 2]
    with torch.no_grad():
        states = []
        for ours, theirs in zip(model.text_encoders, built["text_encoders"]):
            a = ours(ids, output_hidden_states=True).hidden_states[-2]
            b = theirs(ids, output_hidden_states=True).hidden_states[-2]
            assert torch.equal(a, b)
            states.append(a)
        context = torch.cat(states, dim=-1)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        extra = {}
        if family == "SDXL":
            pooled = model.text_encoders[1](ids).text_embeds
            extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": torch.tensor([[128.0, 128, 0, 0, 128, 128]])}}
        out_a = model.unet(latents, 10, encoder_hidden_states=context, **extra).sample
        out_b = built["unet"](latents, 10, encoder_hidden_states=context, **extra).sample
    assert out_a.shape == (1, 4, 16, 16) and torch.isfinite(out_a).all()
    assert torch.equal(out_a, out_b)


def test_large_unused_tensors_stay_in_the_file_and_round_trip(tmp_path: Path, files: dict[str, Path]) -> None:
    state = load_file(str(files["SD1"]))
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.diffusion_modelinput_blocks00weight"] = torch.randn(512, 1024)  # 2 MiB: left in the file
    path = tmp_path / "ema.safetensors"
    save_file(state, str(path))
    model = load_checkpoint(_single(path), CPU, torch.float32)
    special = model.key_map_special
    assert special["extra_in_source"] == ["model_ema.diffusion_modelinput_blocks00weight"]
    assert "model_ema.decay" in special["extra"] and "model_ema.diffusion_modelinput_blocks00weight" not in special["extra"]
    back = cc.diffusers_to_ldm(model.torch_modules(), model.key_map, special)
    assert sorted(back) == sorted(state) and all(torch.equal(back[k], state[k]) for k in state)
    path.unlink()
    with pytest.raises(cc.CheckpointConversionError, match=r"ema\.safetensors: cannot re-read tensors"):
        cc.diffusers_to_ldm(model.torch_modules(), model.key_map, special)


def test_legacy_sd1_clip_names_load_and_are_written_back_unchanged(tmp_path: Path, files: dict[str, Path]) -> None:
    state = load_file(str(files["SD1"]))
    legacy = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
              for k, v in state.items()}
    path = tmp_path / "legacy.safetensors"
    save_file(legacy, str(path))
    model = load_checkpoint(_single(path), CPU, torch.float32)
    reference = load_checkpoint(_single(files["SD1"]), CPU, torch.float32)
    assert torch.equal(model.text_encoders[0].encoder.layers[0].mlp.fc1.weight,
                       reference.text_encoders[0].encoder.layers[0].mlp.fc1.weight)
    back = cc.diffusers_to_ldm(model.torch_modules(), model.key_map, model.key_map_special)
    assert list(back) == list(legacy) and all(torch.equal(back[k], legacy[k]) for k in legacy)


@pytest.mark.parametrize("family", FAMILIES)
def test_config_inference_recovers_the_real_architectures(family: str) -> None:
    """Full-size SD1.5 / SD2.1 / SDXL layouts (meta tensors, no memory): every size is read back from the shapes."""
    real = model_configs.family_config(family)
    built = model_configs.build_components(real, empty=True)
    parts = {"unet": built["unet"], "vae": built["vae"]}
    parts.update({f"text_encoders.{i}": m for i, m in enumerate(built["text_encoders"])})
    shapes = {name: {k: tuple(v.shape) for k, v in m.state_dict().items()} for name, m in parts.items()}
    key_map, transforms = cc.build_key_map(family, real, shapes)
    ldm = cc.diffusers_to_ldm(parts, key_map, {"transforms": transforms})
    inferred = model_configs.infer_family_config(ldm, family)
    assert inferred["unet"] == real["unet"]
    assert inferred["vae"] == real["vae"]
    assert [e["config"] for e in inferred["text_encoders"]] == [e["config"] for e in real["text_encoders"]]
    assert sum(v.numel() for k, v in ldm.items() if k.startswith("model.diffusion_model.")) == {
        "SD1": 859_520_964, "SD2": 865_910_724, "SDXL": 2_567_463_684}[family]
