"""The UI side is as locked as the API: `--api-auth` covers every write, `--gradio-auth` the whole UI, the Host header
is checked (DNS rebinding), and a checkpoint rewritten in place is noticed.

Cases of the outside attack, on a real server with the full Gradio UI and `--api-auth`:
* `/lora-ui/save` wrote sidecars without credentials; now 401 and the sidecar is byte-identical; with them it saves.
* The Gradio API ran txt2img, settings and the LoRA tools without credentials; now every Gradio call (queue join, run,
  call, upload) answers 401 without them; pages and reads stay open (as in A1111).
* A request whose Host header names another host (a page that rebinds its DNS name to 127.0.0.1) gets 421; the local
  names pass; `--allowed-hosts` admits a reverse proxy's name; `--listen` without it admits any.
* `--gradio-auth` (A1111's flag) puts the UI and `/lora-ui/*` behind basic auth, the API keeps its own.
* A checkpoint rewritten in place with its mtime restored is no longer taken for the mapped one (ctime in identity).
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import torch

from modules.host import WebUI
from modules.pristine_weights import MappedSafetensors
from modules.safetensors_header import write_safetensors
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora
from tests.helpers.model_factory import write_single_file

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

AUTH = ("admin", "s3cret-pass")
GRADIO_CALLS = ("/gradio_api/queue/join", "/gradio_api/run/predict", "/gradio_api/call/txt2img",
                "/gradio_api/call/txt2img_cards_refresh", "/gradio_api/upload", "/gradio_api/api/predict")


@dataclass
class Site:
    base: str
    port: int
    webui: WebUI
    lora_dir: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("ui-lock")
    write_single_file(data / "models" / "Stable-diffusion" / "tiny.safetensors", "SD1", seed=5)
    lora_dir = data / "models" / "Lora"
    write_kohya_lora(lora_dir / "ink.safetensors", tiny_loaded_model("SD1", seed=5), seed=1, only=4)
    (lora_dir / "ink.json").write_text('{"notes": "original"}')
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", "--api-auth", f"{AUTH[0]}:{AUTH[1]}"])
    load_startup_model(webui)
    thread = ServerThread(create_app(webui), port=0).start()
    try:
        yield Site(f"http://127.0.0.1:{thread.port}", thread.port, webui, lora_dir)
    finally:
        thread.stop()


def raw_status(port: int, method: str, path: str, host: str) -> int:
    """The status of one request sent with exactly this Host header."""
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_ui_writes_need_the_api_credentials(site: Site, ledger: Ledger) -> None:
    sidecar = site.lora_dir / "ink.json"
    before = sidecar.read_bytes()
    key = str(site.lora_dir / "ink.safetensors")
    with httpx.Client(base_url=site.base, timeout=120) as client:
        assert client.get("/").status_code == 200  # the page and reads stay open
        assert client.get("/lora-ui/cards").status_code == 200
        refused = client.post("/lora-ui/save", json={"key": key, "fields": {"notes": "written by a stranger"}})
        assert refused.status_code == 401 and refused.json()["error"] == "Unauthorized"
        assert client.post("/lora-ui/replace-preview", json={"key": key}).status_code == 401
        for path in GRADIO_CALLS:
            answer = client.post(path, json={"data": [], "fn_index": 0, "session_hash": "x"})
            assert answer.status_code == 401, (path, answer.status_code)
        ledger.bad_input(2 + len(GRADIO_CALLS))
        ledger.intact(sidecar.read_bytes() == before, "the sidecar after an unauthenticated save")
        saved = client.post("/lora-ui/save", json={"key": key, "fields": {"notes": "by the owner"}}, auth=AUTH)
        assert saved.status_code == 200 and '"by the owner"' in sidecar.read_text()
        sidecar.write_bytes(before)
        ledger.served(5 + len(GRADIO_CALLS))


def test_the_gradio_api_refuses_generation_without_credentials(site: Site) -> None:
    from gradio_client import Client  # noqa: PLC0415

    stranger = Client(site.base + "/", verbose=False, download_files=False)
    for api_name in ("/refresh_checkpoints", "/txt2img_lora_refresh", "/interrupt"):
        with pytest.raises(Exception, match="401"):
            stranger.predict(api_name=api_name)
    header = {"Authorization": "Basic " + base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()}
    owner = Client(site.base + "/", verbose=False, download_files=False, headers=header)
    assert "tiny" in str(owner.predict(api_name="/refresh_checkpoints"))


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example", "localhost.evil",
                                  "[::2]:7860", "10.0.0.1"])
def test_a_foreign_host_header_gets_421(site: Site, host: str, ledger: Ledger) -> None:
    for method, path in (("GET", "/"), ("GET", "/sdapi/v1/loras"), ("POST", "/lora-ui/save"),
                         ("GET", "/lora-ui/cards")):
        assert raw_status(site.port, method, path, host) == 421, (host, method, path)
    ledger.bad_input(4)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "LOCALHOST"])
def test_the_local_names_pass(site: Site, host: str) -> None:
    assert raw_status(site.port, "GET", "/lora-ui/cards", f"{host}:{site.port}") == 200


def small_server(data: Path, *flags: str) -> ServerThread:
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default", *flags])
    return ServerThread(create_app(webui, ui=False), port=0).start()


def test_allowed_hosts_listen_and_gradio_auth(tmp_path: Path, ledger: Ledger) -> None:
    proxy = small_server(tmp_path / "a", "--allowed-hosts", "proxy.example,other.example:8443")
    try:
        assert raw_status(proxy.port, "GET", "/sdapi/v1/loras", "proxy.example") == 200
        assert raw_status(proxy.port, "GET", "/sdapi/v1/loras", "other.example:8443") == 200
        assert raw_status(proxy.port, "GET", "/sdapi/v1/loras", "evil.example") == 421
    finally:
        proxy.stop()
    listening = small_server(tmp_path / "b", "--listen")
    try:
        assert raw_status(listening.port, "GET", "/sdapi/v1/loras", "my-pc.lan") == 200
    finally:
        listening.stop()
    locked = small_server(tmp_path / "c", "--gradio-auth", "ui:pw")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{locked.port}", timeout=60) as client:
            assert client.get("/lora-ui/cards").status_code == 401
            assert client.get("/lora-ui/state").status_code == 401
            assert client.get("/lora-ui/cards", auth=("ui", "pw")).status_code == 200
            assert client.get("/lora-ui/cards", auth=("ui", "wrong")).status_code == 401
            assert client.get("/sdapi/v1/loras").status_code == 200  # the API has its own flag, as in A1111
    finally:
        locked.stop()
    ledger.bad_input(4)


def test_a_checkpoint_rewritten_in_place_with_its_mtime_restored_is_noticed(tmp_path: Path, ledger: Ledger) -> None:
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": torch.ones(16, 16)})
    mapped = MappedSafetensors(path)
    assert mapped.unchanged()
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"  # the last float becomes +inf, same size
    with open(path, "r+b") as handle:  # in place: same inode
        handle.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_size == st.st_size
    ledger.fault()
    ledger.intact(not mapped.unchanged(), "a checkpoint rewritten in place is not taken for the mapped one")
