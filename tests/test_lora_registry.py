"""The LoRA registry: scan order, names, aliases, SD version detection, hashes and the metadata cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import torch
from lora_registry import NetworkRegistry, detect_sd_version
from safetensors.torch import save_file

from modules.cache import DiskCache


def write(path, tensors=None, metadata=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors or {"lora_unet_x.lora_down.weight": torch.zeros(2, 3)}, str(path), metadata=metadata)
    return path


def test_scan_order_names_aliases_and_skipped_entries(tmp_path):
    root = tmp_path / "Lora"
    write(root / "b10.safetensors")
    write(root / "b2.safetensors", metadata={"ss_output_name": "shared"})
    write(root / "sub" / "a1.safetensors", metadata={"ss_output_name": "shared"})
    write(root / "sub" / "b2.safetensors")  # same stem as the top-level file
    write(root / "solo.safetensors", metadata={"ss_output_name": "nice alias"})
    (root / "folder.safetensors").mkdir()
    os.symlink(root / "missing.safetensors", root / "broken.safetensors")
    outside = write(tmp_path / "elsewhere" / "linked.safetensors")
    os.symlink(outside.parent, root / "linkdir")
    registry = NetworkRegistry([root, tmp_path / "LyCORIS-absent"], DiskCache(tmp_path / "cache.json"))
    registry.refresh()
    assert [e.relative_name for e in registry.entries()] == ["b2", "b10", "linkdir/linked", "solo", "sub/a1", "sub/b2"]
    assert registry.find("b2").relative_name == "b2" and registry.find("sub/b2").relative_name == "sub/b2"
    assert registry.find("nice alias").name == "solo"
    assert registry.find("shared") is None and "shared" in registry.forbidden_aliases  # ambiguous alias
    assert registry.find("linked") is not None  # symlinked folder followed
    errors = {os.path.basename(k): v for k, v in registry.errors.items()}
    assert errors["folder.safetensors"] == "is a directory, not a LoRA file"
    assert "cannot read" in errors["broken.safetensors"]


def test_sd_version_detection():
    assert detect_sd_version({"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}, {}) == "SDXL"
    assert detect_sd_version({"modelspec.architecture": "flux-1-dev/lora"}, {}) == "Unknown"
    assert detect_sd_version({"ss_base_model_version": "sdxl_base_v1-0"}, {}) == "SDXL"
    assert detect_sd_version({"ss_v2": "True"}, {}) == "SD2"
    assert detect_sd_version({"ss_sd_model_name": "x"}, {}) == "Unknown"  # A1111 would say SD1
    assert detect_sd_version({}, {"lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 1280]}) == "SDXL"
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight"
    assert detect_sd_version({}, {key: [4, 768]}) == "SD1"
    assert detect_sd_version({}, {key: [4, 1024]}) == "SD2"
    assert detect_sd_version({}, {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 1024]}) == "SD2"
    assert detect_sd_version({}, {"something_else.weight": [4, 4]}) == "Unknown"


def test_hash_is_payload_sha256_cached_and_optional(tmp_path):
    root = tmp_path / "Lora"
    path = write(root / "a.safetensors", metadata={"note": "x"})
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    expected = hashlib.sha256(raw[8 + header_len:]).hexdigest()
    cache = DiskCache(tmp_path / "cache.json")
    registry = NetworkRegistry([root], cache)
    registry.refresh()
    entry = registry.find("a")
    assert registry.read_hash(entry) == expected and entry.shorthash == expected[:12]
    assert registry.find_by_short_hash(expected[:12]) is entry
    cached = json.loads((tmp_path / "cache.json").read_text())
    assert cached["hashes-safetensors-payload"][str(path)]["value"] == expected
    again = NetworkRegistry([root], DiskCache(tmp_path / "cache.json"))
    again.refresh()
    assert again.find("a").hash == expected  # from the cache, no re-hash needed
    off = NetworkRegistry([root], None, hashing=False)
    off.refresh()
    assert off.read_hash(off.find("a")) == ""


def test_metadata_cache_is_validated_by_mtime_and_size(tmp_path):
    root = tmp_path / "Lora"
    path = write(root / "a.safetensors", metadata={"ss_output_name": "first", "ss_tag_frequency": '{"d": {"cat": 3}}'})
    registry = NetworkRegistry([root], DiskCache(tmp_path / "cache.json"))
    registry.refresh()
    assert registry.find("a").alias == "first"
    assert registry.find("a").metadata["ss_tag_frequency"] == {"d": {"cat": 3}}  # nested JSON decoded
    write(path, metadata={"ss_output_name": "second-name"})
    registry.refresh()
    assert registry.find("a").alias == "second-name"
