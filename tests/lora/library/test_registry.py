"""The LoRA registry: scan order, names, aliases, SD version detection, hashes and the metadata cache."""

from __future__ import annotations

import hashlib
import json
import os
import struct

import pytest
import torch
from safetensors.torch import save_file

from lorakit.library.registry import NetworkRegistry, companion_allowed, detect_sd_version
from lorakit.library.sidecars import SidecarNotAllowed, read_user_metadata, save_user_metadata
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
    assert detect_sd_version({"modelspec.architecture": "flux-1-dev/lora"}, {}) == "Flux"
    assert detect_sd_version({"modelspec.architecture": "stable-cascade-v1-prior/lora"}, {}) == "Unknown"
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


def test_sidecars_follow_the_companion_rule(tmp_path):
    """Sidecars inside the Lora folders or beside the LoRA's real file are read (a symlinked Lora folder keeps its
    sidecars); a sidecar symlinked anywhere else is ignored, its reason kept in `errors`, and never written."""
    root = tmp_path / "Lora"
    store = tmp_path / "mnt-loras"  # reached through a symlinked folder, the common `models/Lora/shared` setup
    private = tmp_path / "private"
    private.mkdir()
    secret = private / "secret.json"
    secret.write_text(json.dumps({"description": "TOP-SECRET"}))
    write(root / "plain.safetensors")
    (root / "plain.json").write_text(json.dumps({"description": "plain sidecar"}))
    write(store / "shared.safetensors")
    (store / "shared.json").write_text(json.dumps({"description": "shared sidecar"}))
    write(store / "fresh.safetensors")  # no sidecar yet: a save creates it beside the real file
    write(store / "escape.safetensors")
    (store / "escape.json").symlink_to(secret)  # inside the linked folder, but pointing to a third folder
    os.symlink(store, root / "shared", target_is_directory=True)
    write(root / "evil.safetensors")
    (root / "evil.json").symlink_to(secret)
    write(tmp_path / "files" / "filelink.safetensors")  # the LoRA file itself is a symlink ...
    (tmp_path / "files" / "filelink.json").write_text(json.dumps({"description": "beside the real file"}))
    (root / "filelink.safetensors").symlink_to(tmp_path / "files" / "filelink.safetensors")
    (root / "filelink.json").symlink_to(tmp_path / "files" / "filelink.json")  # ... and its sidecar sits beside it
    write(root / "sub" / "inner.safetensors")
    (root / "sub" / "inner.json").symlink_to(root / "plain.json")  # a link that stays inside the Lora folder
    write(root / "broken.safetensors")
    (root / "broken.json").write_text("{not json")
    registry = NetworkRegistry([root], None)
    registry.refresh()

    described = {e.relative_name: e.user_metadata.get("description") for e in registry.entries()}
    assert described == {"broken": None, "evil": None, "filelink": "beside the real file", "plain": "plain sidecar",
                         "shared/escape": None, "shared/fresh": None, "shared/shared": "shared sidecar",
                         "sub/inner": "plain sidecar"}
    errors = {os.path.relpath(k, root): v for k, v in registry.errors.items()}
    assert set(errors) == {"evil.json", "shared/escape.json", "broken.json"}
    assert errors["evil.json"] == errors["shared/escape.json"]
    assert "symlink to outside the Lora folders" in errors["evil.json"]
    assert "not valid JSON" in errors["broken.json"]
    assert registry.find("evil").sidecar_problem == errors["evil.json"]
    assert registry.skipped_reason("evil") is None and registry.skipped_reason("broken") is None  # LoRAs kept

    evil = registry.find("evil")
    assert not companion_allowed(evil.sidecar_path(), evil.filename, registry.roots)
    assert companion_allowed(store / "new.png", registry.find("shared/fresh").filename, registry.roots)
    assert not companion_allowed(secret, registry.find("shared/fresh").filename, registry.roots)
    for name in ("evil", "shared/escape"):
        with pytest.raises(SidecarNotAllowed, match="outside the Lora folders"):
            save_user_metadata(registry.find(name), {"notes": "through the link"}, registry.roots)
        with pytest.raises(SidecarNotAllowed):
            read_user_metadata(registry.find(name), registry.roots)
    assert json.loads(secret.read_text()) == {"description": "TOP-SECRET"}
    assert (root / "evil.json").is_symlink() and (store / "escape.json").is_symlink()

    save_user_metadata(registry.find("shared/shared"), {"notes": "edited"}, registry.roots)
    assert json.loads((store / "shared.json").read_text()) == {"description": "shared sidecar", "notes": "edited"}
    save_user_metadata(registry.find("shared/fresh"), {"notes": "new"}, registry.roots)
    assert json.loads((store / "fresh.json").read_text()) == {"notes": "new"}
    save_user_metadata(registry.find("filelink"), {"notes": "through an allowed link"})  # default: the entry's root
    assert (root / "filelink.json").is_symlink()  # written at its real path: the link stays, its target changes
    assert json.loads((tmp_path / "files" / "filelink.json").read_text())["notes"] == "through an allowed link"


def test_a_lora_linked_into_another_folder_opens_only_its_own_companions_there(tmp_path):
    elsewhere = tmp_path / "system"
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes(b"x")
    (elsewhere / "model.preview.png").write_bytes(b"png")
    (elsewhere / "passwd").write_text("root:x:0:0")
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    os.symlink(elsewhere / "model.safetensors", lora_dir / "x.safetensors")
    os.symlink(elsewhere / "model.preview.png", lora_dir / "x.png")
    os.symlink(elsewhere / "passwd", lora_dir / "x.txt")
    lora = lora_dir / "x.safetensors"
    assert companion_allowed(lora_dir / "x.png", lora, [lora_dir])  # the real file's own preview, beside it
    assert not companion_allowed(lora_dir / "x.txt", lora, [lora_dir])  # any other file of that folder is not
