"""Hostile sizes: huge previews, sparse LoRA files, aliases that are not tag syntax.

* A preview claiming 20000 x 20000 pixels (400 MP; a few hundred bytes on disk) and one of 80 MP: the card picture
  (`/lora-ui/thumb`) and the API thumbnail answer 422 naming the limit, without decoding; an ordinary 1200 x 900
  preview comes back downscaled on the server (at most 512 px on the card, 128 px by default from the API), never as
  the full file.
* A 2 GB sparse `.safetensors` (4 KB on disk, a valid header): listed, but refused before any tensor byte is read
  ("a sparse file"); the process's peak memory stays far below the 2 GB it claims. The other LoRA applies.
* An `ss_output_name` holding `>` or `:` or a newline: the card inserts the stem, which resolves.
"""

from __future__ import annotations

import io
import json
import resource
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from PIL import Image

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from modules.host import WebUI
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.corpus import weights_problems
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora
from tests.helpers.model_factory import write_single_file

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

BAD_ALIASES = {"arrow": "name>oops", "colon": "a:b", "newline": "two\nlines", "spaces": " padded "}


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` (the pixel data is not there: it must never be decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Site:
    base: str
    lora_dir: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("sizes")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=5)
    lora_dir = data / "models" / "Lora"
    model = tiny_loaded_model("SD1", seed=5)
    for index, name in enumerate(("huge", "big", "normal")):
        write_kohya_lora(lora_dir / f"{name}.safetensors", model, seed=index, only=4)
    (lora_dir / "huge.png").write_bytes(png_claiming(20000, 20000))
    (lora_dir / "big.png").write_bytes(png_claiming(10000, 8000))
    (lora_dir / "normal.png").write_bytes(png(1200, 900))
    for index, (stem, alias) in enumerate(BAD_ALIASES.items()):
        write_kohya_lora(lora_dir / f"{stem}.safetensors", model, seed=10 + index, only=4,
                         metadata={"ss_output_name": alias})
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default"])
    load_startup_model(webui)
    thread = ServerThread(create_app(webui, ui=False), port=0).start()
    try:
        yield Site(f"http://127.0.0.1:{thread.port}", lora_dir)
    finally:
        thread.stop()


def test_previews_are_always_downscaled_on_the_server_with_a_pixel_cap(site: Site, ledger: Ledger) -> None:
    with httpx.Client(base_url=site.base, timeout=60) as client:
        for name, megapixels in (("huge", "20000x20000"), ("big", "10000x8000")):
            key = str(site.lora_dir / f"{name}.safetensors")
            card = client.get("/lora-ui/thumb", params={"key": key})
            assert card.status_code == 422, (name, card.status_code)
            api = client.get("/sdapi/v1/lora/thumb", params={"name": name})
            assert api.status_code == 422, (name, api.status_code)
            assert "too large" in card.json()["detail"] or megapixels in card.json()["detail"]
            ledger.bad_input(2)
        normal = client.get("/lora-ui/thumb", params={"key": str(site.lora_dir / "normal.safetensors")})
        assert normal.status_code == 200 and normal.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(normal.content)).size == (512, 384)
        small = client.get("/sdapi/v1/lora/thumb", params={"name": "normal"})
        assert Image.open(io.BytesIO(small.content)).size == (128, 96)
        ledger.served(6)


def test_aliases_that_are_not_tag_syntax_fall_back_to_the_stem(site: Site, ledger: Ledger) -> None:
    with httpx.Client(base_url=site.base, timeout=120) as client:
        cards = {card["name"]: card for card in client.get("/lora-ui/cards").json()["cards"]}
        for stem in BAD_ALIASES:
            assert cards[stem]["alias"] == stem, cards[stem]["alias"]
            ledger.bad_input()
        prompt = "a cat " + " ".join(f"<lora:{cards[stem]['alias']}:0.5>" for stem in BAD_ALIASES)
        result = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2, "width": 64, "height": 64})
    assert result.status_code == 200
    info = json.loads(result.json()["info"])["infotexts"][0]
    assert all(f"{stem}: " in info for stem in BAD_ALIASES), info  # every inserted tag resolved


def test_a_sparse_file_is_refused_before_reading(tmp_path: Path, ledger: Ledger) -> None:
    model = tiny_loaded_model("SD1", seed=5)
    pristine = state_snapshot(model)
    folder = tmp_path / "Lora"
    good = write_kohya_lora(folder / "good.safetensors", model, seed=1, only=4)
    claimed = 2 * 1024**3
    count = claimed // 4
    header = json.dumps({"lora_unet_x.lora_down.weight": {"dtype": "F32", "shape": [count // 64, 64],
                                                          "data_offsets": [0, claimed]}}).encode()
    header += b" " * (-len(header) % 8)
    sparse = folder / "sparse.safetensors"
    with open(sparse, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + claimed)  # a hole: nothing allocated
    assert sparse.stat().st_blocks * 512 < 1024 * 1024
    registry = NetworkRegistry([folder], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = engine.activate([NetworkRequest("sparse"), NetworkRequest("good")])
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ledger.bad_input()
    assert "a sparse file" in report.errors["sparse"] and "2147483648 bytes" in report.errors["sparse"]
    assert peak_after - peak_before < claimed // 4, (peak_before, peak_after)
    wrong = weights_problems(model, pristine, good)
    ledger.intact(not wrong, f"the good LoRA beside a sparse file: {wrong[:3]}")
