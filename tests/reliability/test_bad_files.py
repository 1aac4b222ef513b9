"""One bad file never disables the extension: hostile JSON in metadata and sidecars, per-file refresh, cache.json.

The cases of the outside attack, each on a real server (uvicorn on 127.0.0.1, the API and the card routes) with good
LoRAs beside them:
* metadata holding an integer of 5,000 digits, JSON nested 990 deep, `1e999` / `Infinity` tag counts, a lone
  surrogate (in a JSON field and as a plain value), and a header whose `__metadata__` itself is nested 990 deep (an
  undecodable file);
* sidecars `<name>.json` holding the same (5,000-digit integer, 990 deep, `Infinity`), and a sidecar that is not JSON.
`/sdapi/v1/loras`, `/lora-ui/cards`, every card's popup, editor and block chart answer (no 500), a generation with a
good LoRA applies it (`Lora hashes`), and the undecodable file is listed with its reason in
`/sdapi/v1/lora/unreadable` and in the cards' error list. Then without a server: metadata 980 deep does not poison
cache.json across restarts, a poisoned cache entry is dropped and made afresh, and entries of deleted files are
pruned; the one JSON reader (`modules.safe_json`) refuses each hostile form with a specific message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from lorakit.library.registry import METADATA_CACHE, NetworkRegistry
from modules import safe_json
from modules.cache import DiskCache
from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.corpus import join_safetensors, split_safetensors
from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora
from tests.helpers.model_factory import write_single_file

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

DIGITS = "9" * 5000
DEEP = '{"a":' * 990 + "1" + "}" * 990
HOSTILE_METADATA = {
    "big_int": {"ss_tag_frequency": '{"set": {"tag": ' + DIGITS + "}}"},
    "deep": {"ss_datasets": DEEP},
    "inf_count": {"ss_tag_frequency": '{"set": {"glow": 1e999, "ink": Infinity, "ok": 3}}'},
    "surrogate_json": {"ss_tag_frequency": '{"set": {"\\ud800bad": 2}}'},
    "surrogate_text": {"ss_note": "\ud800"},  # written as a \\ud800 escape into the header
}
HOSTILE_SIDECARS = {
    "side_big_int": '{"preferred weight": ' + DIGITS + "}",
    "side_deep": DEEP,
    "side_inf": '{"preferred weight": Infinity, "description": "x"}',
    "side_garbage": "{not json",
}
GOOD = ("good", "other")


def write_surrogate_header(path: Path, model: Any) -> None:
    """A LoRA whose header JSON holds a lone surrogate escape in a metadata value."""
    write_kohya_lora(path, model, seed=31, only=4)
    header, payload = split_safetensors(path.read_bytes())
    header["__metadata__"] = {"ss_output_name": "x", "ss_note": "PLACEHOLDER"}
    raw = json.dumps(header).replace("PLACEHOLDER", "\\ud800").encode("ascii")
    path.write_bytes(join_safetensors(raw, payload))


@dataclass
class Site:
    base: str
    webui: WebUI
    lora_dir: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("bad-files")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=5)
    lora_dir = data / "models" / "Lora"
    model = tiny_loaded_model("SD1", seed=5)
    write_kohya_lora(lora_dir / "good.safetensors", model, seed=1)
    write_kohya_lora(lora_dir / "other.safetensors", model, seed=2, only=6)
    for index, (name, metadata) in enumerate(HOSTILE_METADATA.items()):
        if name == "surrogate_text":
            write_surrogate_header(lora_dir / f"{name}.safetensors", model)
        else:
            write_kohya_lora(lora_dir / f"{name}.safetensors", model, seed=10 + index, only=4, metadata=metadata)
    for index, (name, text) in enumerate(HOSTILE_SIDECARS.items()):
        write_kohya_lora(lora_dir / f"{name}.safetensors", model, seed=20 + index, only=4)
        (lora_dir / f"{name}.json").write_text(text)
    undecodable = lora_dir / "undecodable.safetensors"
    write_kohya_lora(undecodable, model, seed=30, only=4)
    header, payload = split_safetensors(undecodable.read_bytes())
    raw = json.dumps(header)[:-1] + ', "__metadata__": ' + DEEP + "}"
    undecodable.write_bytes(join_safetensors(raw.encode(), payload))
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default"])
    load_startup_model(webui)
    thread = ServerThread(create_app(webui, ui=False), port=0).start()
    try:
        yield Site(f"http://127.0.0.1:{thread.port}", webui, lora_dir)
    finally:
        thread.stop()


def test_one_undecodable_file_among_good_ones_breaks_nothing(site: Site, ledger: Ledger) -> None:
    ledger.bad_input(len(HOSTILE_METADATA) + len(HOSTILE_SIDECARS) + 1)
    with httpx.Client(base_url=site.base, timeout=120) as client:
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        listed = client.get("/sdapi/v1/loras")
        assert listed.status_code == 200, listed.text[:300]
        names = {item["name"] for item in listed.json()}
        assert set(GOOD) | set(HOSTILE_METADATA) | set(HOSTILE_SIDECARS) == names  # odd fields never hide a file
        unreadable = {Path(i["file"]).name: i["reason"] for i in client.get("/sdapi/v1/lora/unreadable").json()}
        assert "safetensors header nests JSON more than" in unreadable["undecodable.safetensors"]
        assert "5000 digits" in unreadable["side_big_int.json"]
        assert "nests JSON" in unreadable["side_deep.json"]
        assert "Infinity" in unreadable["side_inf.json"]
        assert "not valid JSON" in unreadable["side_garbage.json"]
        cards = client.get("/lora-ui/cards")
        assert cards.status_code == 200
        payload = cards.json()
        assert {card["name"] for card in payload["cards"]} == names
        assert any(e["file"].endswith("undecodable.safetensors") and "nests JSON more than" in e["reason"]
                   for e in payload["errors"])
        by_name = {card["name"]: card for card in payload["cards"]}
        assert by_name["inf_count"]["tags"] == []  # the tag counts were not JSON: no tags, no 500
        assert by_name["surrogate_text"]["alias"] == "x"
        note = client.get("/sdapi/v1/lora", params={"name": "surrogate_text"}).json()["metadata"]["ss_note"]
        assert note == "\ufffd"  # the lone surrogate is replaced, so every UTF-8 response can carry it
        for card in payload["cards"]:
            for route in ("metadata", "editor", "blocks", "card"):
                answer = client.get(f"/lora-ui/{route}", params={"key": card["key"]})
                assert answer.status_code == 200, (route, card["name"], answer.text[:300])
            details = client.get("/sdapi/v1/lora", params={"name": card["name"]})
            assert details.status_code == 200, (card["name"], details.text[:300])
            ledger.served(5)
        big = client.get("/sdapi/v1/lora", params={"name": "big_int"}).json()
        assert big["metadata"]["ss_tag_frequency"].endswith("99999}}")  # kept as the text the file holds
        result = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:good:1> <lora:undecodable:1>",
                                                        "steps": 3, "width": 64, "height": 64, "seed": 2})
        ledger.served(6)
    assert result.status_code == 200, result.text[:500]
    info = json.loads(result.json()["info"])
    assert 'Lora hashes: "good: ' in info["infotexts"][0]
    comments = info.get("comments") or result.json().get("comments") or json.dumps(info)
    assert "undecodable" in str(comments) and "nests JSON more than" in str(comments)  # the skipped file is named, with why


def test_safe_json_refuses_each_hostile_form_with_a_specific_message(ledger: Ledger) -> None:
    cases = {
        '{"n": ' + DIGITS + "}": "5000 digits",
        DEEP: "nests JSON more than",
        "[" * 5000 + "]" * 5000: "nests JSON more than",
        "[" * 65 + "]" * 65: "nests JSON more than 64 levels deep",
        '{"x": 1e999}': "too large for a float",
        '{"x": NaN}': "NaN, which is not JSON",
        '{"x": -Infinity}': "-Infinity, which is not JSON",
        b'{"x": "\xff"}': "not valid JSON \\(not UTF-8",
        '{"x": ': "not valid JSON",
    }
    for text, message in cases.items():
        with pytest.raises(safe_json.JsonError, match=message):
            safe_json.loads(text)
        ledger.bad_input()
    assert safe_json.loads('{"s": "\\ud800x", "\\udfff": 1}') == {"s": "\ufffdx", "\ufffd": 1}
    assert safe_json.loads('{"s": "\\ud800"}', keep_surrogates=True) == {"s": "\ud800"}
    assert safe_json.sendable({"a": float("nan"), "b": [float("-inf")], "c": "\ud800"}) == \
        {"a": "nan", "b": ["-inf"], "c": "\ufffd"}
    with pytest.raises(ValueError):
        safe_json.dumps({"x": float("inf")})


def test_deep_metadata_does_not_poison_cache_json_across_restarts(tmp_path: Path, ledger: Ledger) -> None:
    lora_dir = tmp_path / "Lora"
    model = tiny_loaded_model("SD1", seed=5)
    write_kohya_lora(lora_dir / "good.safetensors", model, seed=1, metadata={"ss_output_name": "goodie"})
    deep = '{"a":' * 980 + "1" + "}" * 980
    write_kohya_lora(lora_dir / "deep.safetensors", model, seed=2, only=4, metadata={"ss_datasets": deep})
    write_kohya_lora(lora_dir / "gone.safetensors", model, seed=3, only=4)
    cache_path = tmp_path / "cache.json"
    for restart in range(3):  # each restart: a new cache object read from cache.json, a new registry
        registry = NetworkRegistry([lora_dir], DiskCache(cache_path))
        registry.refresh()
        assert sorted(e.name for e in registry.entries()) == (["deep", "gone", "good"] if restart < 2 else
                                                             ["deep", "good"])
        assert registry.find("goodie") is not None and registry.find("deep").metadata["ss_datasets"] == deep
        assert safe_json.read_file(cache_path, keep_surrogates=True, max_depth=80)[METADATA_CACHE]
        if restart == 0:  # poison the good file's entry (right mtime and size, wrong shape): it is made afresh
            data = json.loads(cache_path.read_text())
            key = str((lora_dir / "good.safetensors").resolve())
            data[METADATA_CACHE][key]["value"] = {"version": 4, "metadata": "garbage", "algorithm": 7}
            cache_path.write_text(json.dumps(data))
        if restart == 1:
            (lora_dir / "gone.safetensors").unlink()
    cached = json.loads(cache_path.read_text())
    assert not any(key.endswith("gone.safetensors") for section in cached.values() for key in section)
    good_entry = cached[METADATA_CACHE][str((lora_dir / "good.safetensors").resolve())]["value"]
    assert good_entry["metadata"]["ss_output_name"] == "goodie"
    ledger.bad_input(2)
    ledger.intact(True, "cache.json usable after three restarts")
