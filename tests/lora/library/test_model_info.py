"""Model-page data (Civitai `.civitai.info`, SD.Next's Civitai-format `<stem>.json`, modelspec) and same-stem files
in the registry (issue 15): what is read, which format a `<stem>.json` is, what is never written, which name reaches
which file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lorakit.library.model_info import ModelInfo, base_model_family, is_civitai_format, read_companion_json
from lorakit.library.registry import CIVITAI_CACHE, NetworkRegistry
from lorakit.library.sidecars import UserMetadataError, save_user_metadata
from lorakit.prompt.trigger_words import words_for
from modules.cache import DiskCache


def write(path, scale=1.0, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.full((2, 3), scale)}, str(path), metadata=metadata)
    return path


def registry_of(tmp_path):
    registry = NetworkRegistry([tmp_path / "Lora"], DiskCache(tmp_path / "cache.json"))
    registry.refresh()
    return registry


CIVITAI = {"id": 2, "modelId": 1, "name": "v1", "baseModel": "SDXL 1.0", "trainedWords": ["ink, wash", "sumi"],
           "description": "<p>hi</p>", "model": {"name": "Ink"}, "creator": {"username": "maker"}}


def test_the_json_format_rule_tells_civitai_from_a1111():
    assert is_civitai_format(CIVITAI)
    assert is_civitai_format({"trainedWords": [], "baseModel": "SD 1.5"})
    assert not is_civitai_format({"description": "mine", "activation text": "x", "modelId": 1})  # A1111 key wins
    assert not is_civitai_format({"description": "mine", "civitai": {"id": 1}})  # A1111 sidecar with a tool's key
    assert not is_civitai_format(["modelId"])
    assert [base_model_family(b) for b in ("SD 1.5", "SD 2.1 768", "SDXL Turbo", "Pony", "Flux.1 D")] == \
        ["SD1", "SD2", "SDXL", "SDXL", "Unknown"]


def test_civitai_info_is_read_cached_and_never_written(tmp_path):
    lora = write(tmp_path / "Lora" / "ink.safetensors")
    info_path = lora.with_suffix(".civitai.info")
    info_path.write_text(json.dumps(CIVITAI))
    before = info_path.read_bytes()
    entry = registry_of(tmp_path).find("ink")
    info = entry.model_info
    assert info.trigger_words == ("ink", "wash", "sumi") and info.model_name == "Ink" and info.version_name == "v1"
    assert info.url == "https://civitai.com/models/1?modelVersionId=2" and info.author == "maker"
    assert entry.effective_sd_version == "SDXL"  # detection said Unknown: the base model fills it in
    assert entry.activation_text == "ink, wash, sumi"
    assert words_for(entry, "Activation text", 3) == ["ink, wash, sumi"]  # the auto-trigger option uses them too
    save_user_metadata(entry, {"activation text": "my words"})  # the A1111 sidecar is written, the info file not
    assert entry.activation_text == "my words" and info_path.read_bytes() == before
    st = info_path.stat()
    cached = DiskCache(tmp_path / "cache.json").get(CIVITAI_CACHE, str(info_path), (st.st_mtime, st.st_size))
    assert ModelInfo.from_cache(cached) == info  # a warm rescan does not parse the file again


def test_a_civitai_format_json_feeds_the_card_and_refuses_edits(tmp_path):
    lora = write(tmp_path / "Lora" / "neon.safetensors")
    sidecar = lora.with_suffix(".json")
    sidecar.write_text(json.dumps(CIVITAI))
    entry = registry_of(tmp_path).find("neon")
    assert entry.sidecar_is_civitai and entry.user_metadata == {} and entry.model_info.source == "json"
    with pytest.raises(UserMetadataError, match="Civitai's model data .* rename it to neon.civitai.info"):
        save_user_metadata(entry, {"notes": "x"})
    assert json.loads(sidecar.read_text()) == CIVITAI


def test_modelspec_fields_and_a_too_large_or_broken_info_file(tmp_path):
    spec = {"modelspec.title": "Spec", "modelspec.trigger_phrase": "a, b", "modelspec.description": "desc",
            "modelspec.license": "MIT"}
    write(tmp_path / "Lora" / "spec.safetensors", metadata=spec)
    broken = write(tmp_path / "Lora" / "broken.safetensors")
    broken.with_suffix(".civitai.info").write_text("{not json")
    registry = registry_of(tmp_path)
    info = registry.find("spec").model_info
    assert (info.source, info.trigger_words, info.model_name, info.license) == ("modelspec", ("a", "b"), "Spec", "MIT")
    assert registry.find("broken").model_info is None  # ignored with a log line, the LoRA itself is kept
    with pytest.raises(ValueError, match="not valid JSON"):
        read_companion_json(broken.with_suffix(".civitai.info"))


def test_same_stem_files_get_names_that_reach_them_and_a_notice(tmp_path):
    first = write(tmp_path / "Lora" / "concepts" / "lineart.safetensors", 1.0)
    second = write(tmp_path / "Lora" / "styles" / "lineart.safetensors", 2.0)
    write(tmp_path / "Lora" / "solo.safetensors", metadata={"ss_output_name": "lineart"})  # an alias = the stem
    registry = registry_of(tmp_path)
    a, b = registry.find("concepts/lineart"), registry.find("styles/lineart")
    assert a.filename == str(first) and b.filename == str(second)
    assert registry.prompt_name(a) == "concepts/lineart" and registry.prompt_name(b) == "styles/lineart"
    solo = registry.find("solo")
    assert registry.prompt_name(solo) == "solo"  # its alias "lineart" would reach another file
    assert [e.relative_name for e in registry.candidates("lineart")] == ["concepts/lineart", "styles/lineart"]
    assert registry.find("lineart") is a
    assert registry.ambiguity_message("lineart").startswith("'lineart' names 2 files: concepts/lineart (used), "
                                                            "styles/lineart")
    assert registry.candidates("solo") == [] and registry.ambiguity_message("solo") is None
    # paste by hash: nothing is hashed yet; the pasted name's candidates are hashed on demand to find the file
    wanted = registry.read_hash(b)[:12]
    b.hash = ""
    registry.hash_lookup.clear()
    assert registry.find_by_short_hash(wanted) is None
    assert registry.find_by_short_hash(wanted, "lineart") is b
