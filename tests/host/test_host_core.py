"""Host core: options store, disk cache, hashes, atomic writes, prompt tag parsing."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest

from modules.atomic_io import write_json_atomic
from modules.cache import DiskCache
from modules.extra_networks import ExtraNetwork, ExtraNetworkRegistry, parse_prompt, parse_prompts
from modules.hashes import file_hash, safetensors_payload_sha256, short_hash
from modules.options import Options


def test_options_keep_unknown_keys_and_validate(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"from_other_extension": 5, "steps_default": "bad"}))
    options = Options(config)
    options.add("steps_default", 20, "Steps", minimum=1)
    assert options.get("steps_default") == 20  # bad stored value falls back to the default
    options.set("steps_default", 30)
    saved = json.loads(config.read_text())
    assert saved["from_other_extension"] == 5 and saved["steps_default"] == 30
    with pytest.raises(ValueError, match="steps_default"):
        options.set("steps_default", 0)
    with pytest.raises(KeyError):
        options.set("nope", 1)


def test_atomic_write_failure_keeps_previous_file(tmp_path):
    target = tmp_path / "x.json"
    write_json_atomic(target, {"a": 1})

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        write_json_atomic(target, {"a": Unserialisable()})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_disk_cache_invalidates_on_change(tmp_path):
    data = tmp_path / "f.bin"
    data.write_bytes(b"abc")
    cache = DiskCache(tmp_path / "cache.json")
    cache.set("hashes", data, "v1")
    assert DiskCache(tmp_path / "cache.json").get("hashes", data) == "v1"
    data.write_bytes(b"abcd")
    assert cache.get("hashes", data) is None


def test_safetensors_payload_hash_ignores_header(tmp_path):
    payload = b"\x00" * 16
    header = json.dumps({"__metadata__": {"a": "b"}}).encode()
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert safetensors_payload_sha256(path) == expected
    assert file_hash(path) == expected
    assert short_hash(expected) == expected[:12]
    path.write_bytes(struct.pack("<Q", 10_000) + header)
    with pytest.raises(ValueError, match="beyond the end"):
        safetensors_payload_sha256(path)


def test_parse_prompt_tags():
    text, data = parse_prompt("a cat <lora:foo:0.5:unet=0.2>, <lyco:bar>, <unknown:x> dog")
    assert text == "a cat , ,  dog"
    assert data["lora"][0].positional == ["foo", "0.5"] and data["lora"][0].named == {"unet": "0.2"}
    assert data["lyco"][0].positional == ["bar"]
    texts, first = parse_prompts(["<lora:a:1> x", "<lora:b:1> y"])
    assert texts == [" x", " y"] and first["lora"][0].positional == ["a", "1"]


def test_registry_calls_unmentioned_handlers_with_empty_list():
    calls = []

    class Recorder(ExtraNetwork):
        def __init__(self, name):
            self.name = name

        def activate(self, p, params_list):
            calls.append((self.name, [x.items for x in params_list]))

    registry = ExtraNetworkRegistry()
    registry.register(Recorder("lora"), aliases=["lyco"])
    registry.register(Recorder("hypernet"))
    _, data = parse_prompt("<lora:a:1> <lyco:b> <other:c>")
    registry.activate(type("P", (), {"comments": []})(), data)
    assert calls == [("lora", [["a", "1"], ["b"]]), ("hypernet", [])]
