"""No hangs: FIFOs, folder symlink loops and bounded scans.

* The real server (`launch.py`, a subprocess) starts on a data folder whose Lora folder holds a FIFO named
  `x.safetensors`, a FIFO sidecar and a FIFO preview, two folder symlinks pointing back at their own folder and one
  at its parent, and an unrelated broken file; the checkpoint folder holds a FIFO checkpoint and a loop too. It
  starts listening, lists every real LoRA exactly once (also after a rescan), lists the FIFO and the broken file
  among the unreadable ones with their reasons, and generates with the LoRAs (both in `Lora hashes`) within the hang
  bound. The times of a generation with and without the LoRAs are printed (never asserted: speed lives in bench/).
* The merge CLI on the same folder finishes, writes its output and prints no traceback; a missing LoRA gives one
  line naming it.
* The registry's walk is bounded: a folder with more names than `max_entries` stops with its reason listed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from lorakit.library.registry import NetworkRegistry
from modules.regular_files import NotRegularFileError, open_regular, walk
from tests.helpers.lora_testing import tiny_loaded_model, write_kohya_lora
from tests.helpers.model_factory import write_single_file
from tests.helpers.paths import ROOT
from tests.helpers.servers import free_port, stop_servers, wait_until_up

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger

HANG_BOUND = 120.0  # seconds: a hang, not a speed goal
GOOD = ("good1", "good2")


def hostile_lora_folder(lora_dir: Path, seed: int = 5) -> None:
    """Two real LoRAs plus FIFOs, folder loops and a broken file (see the module docstring)."""
    model = tiny_loaded_model("SD1", seed=seed)
    write_kohya_lora(lora_dir / "good1.safetensors", model, rank=4, alpha=4.0, seed=1)
    write_kohya_lora(lora_dir / "sub" / "good2.safetensors", model, rank=2, alpha=2.0, seed=2, only=8)
    os.mkfifo(lora_dir / "x.safetensors")
    os.mkfifo(lora_dir / "good1.json")  # the sidecar of a good LoRA
    os.mkfifo(lora_dir / "sub" / "good2.png")  # the preview of a good LoRA
    os.mkfifo(lora_dir / "sub" / "good2.txt")  # its description
    (lora_dir / "self_a").symlink_to(".", target_is_directory=True)
    (lora_dir / "self_b").symlink_to(".", target_is_directory=True)
    (lora_dir / "sub" / "up").symlink_to("..", target_is_directory=True)
    (lora_dir / "broken.safetensors").write_bytes(b"\xff" * 64)


@dataclass
class Site:
    base: str
    data: Path
    lora_dir: Path
    ckpt: Path
    process: subprocess.Popen
    log_path: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    data = tmp_path_factory.mktemp("hangs")
    ckpt_dir = data / "models" / "Stable-diffusion"
    ckpt = write_single_file(ckpt_dir / "tiny.safetensors", "SD1", seed=5)
    os.mkfifo(ckpt_dir / "fifo.safetensors")
    (ckpt_dir / "loop").symlink_to(".", target_is_directory=True)
    lora_dir = data / "models" / "Lora"
    hostile_lora_folder(lora_dir)
    port = free_port()
    log_path = data / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", str(data), "--nowebui",
             "--no-embedded-default", "--ckpt", "tiny.safetensors"],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + "/sdapi/v1/progress", process, timeout=HANG_BOUND)
        yield Site(base, data, lora_dir, ckpt, process, log_path)
    finally:
        stop_servers(process)


def names(client: httpx.Client) -> list[str]:
    return sorted(item["name"] for item in client.get("/sdapi/v1/loras").json())


def test_server_with_fifos_and_loops_starts_lists_each_lora_once_and_generates(site: Site, ledger: Ledger) -> None:
    ledger.bad_input(8)  # 4 FIFOs, 3 folder links looping back, 1 broken file (and the checkpoint folder's two)
    with httpx.Client(base_url=site.base, timeout=HANG_BOUND) as client:
        assert names(client) == list(GOOD)  # each real LoRA once, not once per loop
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        assert names(client) == list(GOOD)
        unreadable = {Path(item["file"]).name: item["reason"] for item in client.get("/sdapi/v1/lora/unreadable").json()}
        assert "FIFO" in unreadable["x.safetensors"] and "not a regular file" in unreadable["x.safetensors"]
        assert "broken.safetensors" in unreadable
        assert "FIFO" in unreadable["good1.json"]  # the FIFO sidecar is ignored, its LoRA kept
        models = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert any("tiny" in title for title in models) and not any("fifo" in title for title in models)
        body = {"prompt": "a cat", "steps": 4, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
        start = time.perf_counter()
        plain = client.post("/sdapi/v1/txt2img", json=body)
        plain_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with_loras = client.post("/sdapi/v1/txt2img",
                                 json={**body, "prompt": "a cat <lora:good1:1> <lora:good2:0.5>"})
        lora_seconds = time.perf_counter() - start
        ledger.served(6)
    assert plain.status_code == 200 and with_loras.status_code == 200, with_loras.text[:500]
    info = with_loras.json()["info"]
    assert "Lora hashes" in info and "good1: " in info and "good2: " in info
    assert with_loras.json()["images"][0] != plain.json()["images"][0]
    print(f"\ngeneration on the hostile folder: {plain_seconds:.2f} s without LoRAs, {lora_seconds:.2f} s with two")


def test_merge_cli_on_the_hostile_folder_finishes_without_a_traceback(site: Site, tmp_path: Path,
                                                                      ledger: Ledger) -> None:
    out = tmp_path / "merged.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(ROOT / "launch.py"), "merge", "--ckpt", str(site.ckpt), "--lora-dir",
            str(site.lora_dir), "--prompt", "<lora:good1:0.8>", "--out", str(out), "--max-seconds", "300"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=HANG_BOUND * 3, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and out.is_file()
    missing = subprocess.run([*argv[:-4], "--prompt", "<lora:nope:1>", "--out", str(tmp_path / "m2.safetensors")],
                             cwd=ROOT, capture_output=True, text=True, timeout=HANG_BOUND * 3, env=env)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    failed = [line for line in missing.stderr.splitlines() if line.startswith("merge failed")]
    assert len(failed) == 1 and "nope" in failed[0], missing.stderr[-2000:]
    ledger.bad_input(2)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path, ledger: Ledger) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(NotRegularFileError, match="FIFO"):
        open_regular(fifo)
    with pytest.raises(NotRegularFileError, match="folder"):
        open_regular(tmp_path)
    ledger.bad_input(2)


def test_the_scan_is_bounded_and_loops_end(tmp_path: Path, ledger: Ledger) -> None:
    lora_dir = tmp_path / "Lora"
    hostile_lora_folder(lora_dir)
    listed = [os.path.join(folder, name) for folder, _, files in walk(lora_dir) for name in files]
    assert sorted(Path(p).name for p in listed if p.endswith("good1.safetensors")) == ["good1.safetensors"]
    registry = NetworkRegistry([lora_dir], cache=None, hashing=False)
    registry.refresh()
    assert sorted(e.name for e in registry.entries()) == list(GOOD)
    for index in range(30):
        (lora_dir / f"filler{index}.txt").write_text("x")
    bounded = NetworkRegistry([lora_dir], cache=None, hashing=False, max_entries=10)
    bounded.refresh()
    assert "stopped after 10 names" in bounded.errors[str(lora_dir)]
    ledger.bad_input(2)
