"""Options validated by type; a malformed config.json never stops the server; the error handler answers any body.

Cases of the outside attack: a list option set to a 500-deep nesting (it used to be persisted, then GET options and
`/lora-ui/state` answered 500, also after a restart), float options set to Infinity/NaN (written as non-standard JSON
into config.json), a malformed config.json (the server did not start), and request bodies holding NaN (the
validation handler itself answered 500).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from modules.host import WebUI
from modules.options import OptionInfo, Options
from modules.webui_server import ServerThread, create_app

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

LIST_KEY, FLOAT_KEY = "lora_hide_unknown_for_versions", "extra_networks_default_multiplier"


def nested(depth: int) -> list:
    value: list = ["SD1"]
    for _ in range(depth):
        value = [value]
    return value


def test_the_store_validates_by_type(tmp_path: Path, ledger: Ledger) -> None:
    options = Options(tmp_path / "config.json")
    options.register(OptionInfo("names", ["a"], "names"))
    options.register(OptionInfo("any_list", [], "any"))
    options.register(OptionInfo("scale", 1.0, "scale"))
    options.register(OptionInfo("count", 3, "count"))
    options.register(OptionInfo("label", "x", "label"))
    bad = [("names", nested(500), "list of text or numbers"), ("any_list", [[1]], "list of text or numbers"),
           ("names", ["a", 1], "list of text"), ("any_list", [float("nan")], "finite"),
           ("scale", float("inf"), "finite"), ("scale", float("nan"), "finite"), ("scale", "Infinity", "finite"),
           ("count", float("inf"), "expects a int"), ("count", 1e400, "expects a int"), ("label", {"a": 1}, "a dict"),
           ("any_list", list(range(5000)), "at most 1000 items")]
    for key, value, message in bad:
        with pytest.raises(ValueError, match=message):
            options.set(key, value)
        ledger.bad_input()
    assert options.set("names", ["b", "c"]) and options.get("names") == ["b", "c"]
    assert options.set("scale", 0.5) and options.set("any_list", [1, "x", True])
    text = (tmp_path / "config.json").read_text()
    assert "NaN" not in text and "Infinity" not in text and json.loads(text)["scale"] == 0.5
    ledger.intact(json.loads(text)["names"] == ["b", "c"], "the good values persisted")


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", json.dumps({"x": nested(500)}),
                                     '{"a": ' + "1" * 5000 + "}", '{"scale": NaN}'])
def test_a_malformed_config_json_is_moved_aside_and_the_defaults_used(tmp_path: Path, content: str,
                                                                     ledger: Ledger) -> None:
    path = tmp_path / "config.json"
    path.write_text(content, encoding="utf-8")
    options = Options(path)
    options.register(OptionInfo("scale", 1.0, "scale"))
    ledger.bad_input()
    assert options.get("scale") == 1.0
    aside = list(tmp_path.glob("config.json.broken-*"))
    assert len(aside) == 1 and aside[0].read_text(encoding="utf-8") == content  # nothing lost
    assert not path.exists()
    options.set("scale", 2.0)
    assert json.loads(path.read_text())["scale"] == 2.0


def test_a_byte_order_mark_is_not_malformed(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('\ufeff{"scale": 2.5}', encoding="utf-8")
    options = Options(tmp_path / "config.json")
    options.register(OptionInfo("scale", 1.0, "scale"))
    assert options.get("scale") == 2.5 and not list(tmp_path.glob("config.json.broken-*"))


def test_a_persisted_nested_list_falls_back_to_its_default(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"names": nested(20), "other": 5}))
    options = Options(path)
    options.register(OptionInfo("names", ["a"], "names"))
    assert options.get("names") == ["a"] and options.as_dict()["other"] == 5


@dataclass
class Site:
    base: str
    data: Path
    thread: ServerThread


def start(data: Path) -> Site:
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default"])
    thread = ServerThread(create_app(webui, ui=False), port=0).start()
    return Site(f"http://127.0.0.1:{thread.port}", data, thread)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "config.json").write_text("{ this is not json")
    running = start(tmp_path)  # a malformed config.json does not stop the server
    try:
        yield running
    finally:
        running.thread.stop()


def test_the_server_refuses_bad_values_and_answers_nan_bodies(site: Site, ledger: Ledger) -> None:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=site.base, timeout=60) as client:
        assert client.get("/sdapi/v1/options").status_code == 200
        for body in ({LIST_KEY: nested(500)}, {LIST_KEY: [["SD1"]]}):
            answer = client.post("/sdapi/v1/options", json=body)
            assert answer.status_code == 422, answer.text[:300]
            ledger.bad_input()
        for raw in (f'{{"{FLOAT_KEY}": NaN}}', f'{{"{FLOAT_KEY}": Infinity}}', f'{{"{FLOAT_KEY}": -Infinity}}',
                    '{"prompt": NaN, "steps": NaN}', '{"prompt": "x", "cfg_scale": NaN, "width": [NaN]}'):
            route = "/sdapi/v1/options" if FLOAT_KEY in raw else "/sdapi/v1/txt2img"
            answer = client.post(route, content=raw, headers=headers)
            assert answer.status_code == 422, (raw, answer.status_code, answer.text[:300])
            assert answer.json()["error"] and "NaN" not in answer.text.replace('"nan"', "")
            ledger.bad_input()
        options = client.get("/sdapi/v1/options")
        assert options.status_code == 200 and options.json()[FLOAT_KEY] == 1.0
        assert client.get("/lora-ui/state").status_code == 200
        assert client.post("/sdapi/v1/options", json={LIST_KEY: ["SD1"], FLOAT_KEY: 0.75}).status_code == 200
        ledger.served(12)
    site.thread.stop()
    text = (site.data / "config.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    again = start(site.data)  # after a restart everything still answers
    try:
        with httpx.Client(base_url=again.base, timeout=60) as client:
            values = client.get("/sdapi/v1/options").json()
            assert values[LIST_KEY] == ["SD1"] and values[FLOAT_KEY] == 0.75
            assert client.get("/lora-ui/state").status_code == 200
    finally:
        again.thread.stop()
    assert len(list(site.data.glob("config.json.broken-*"))) == 1
