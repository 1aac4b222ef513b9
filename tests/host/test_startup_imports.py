"""Start-up imports: nothing the first page does not need is imported before the server listens.

`python -X importtime launch.py` on a data folder that already holds what the first start writes (the embedded
default checkpoint and the demo LoRAs, whose writers build tiny models with diffusers), i.e. any start but the first.
The interpreter writes a line to stderr for each module as it is first imported, and the server logs "serving on ..."
to the same stream once it listens, so the log's order is the order of events. diffusers and transformers (the
model's packages, imported by the model load that runs after serving) must not be imported before that line; gradio
(the page's) must, and diffusers must come after it once the model loads (so the test sees imports at all).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lorakit.library.demo_loras import ensure_demo_loras
from modules.cmd_args import parse_args
from modules.embedded_default import ensure_embedded_default
from modules.paths import Paths
from tests.helpers.servers import ROOT, free_port, stop_servers

IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*([\w.]+)\s*$")
MODEL_PACKAGES = ("diffusers", "transformers")


def imports_before_and_after(log: list[str], marker: str) -> tuple[set[str], set[str]]:
    """Top-level packages first imported before the first line containing `marker`, and after it."""
    before: set[str] = set()
    after: set[str] = set()
    seen_marker = False
    for line in log:
        if marker in line:
            seen_marker = True
        match = IMPORT_LINE.match(line)
        if match:
            (after if seen_marker else before).add(match.group(1).split(".")[0])
    return before, after


def wait_for_line(path: Path, text: str, process: subprocess.Popen, timeout: float) -> list[str]:
    """The log's lines once one contains `text` (AssertionError if the process exits or `timeout` passes first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        if any(text in line for line in lines):
            return lines
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}: {lines[-20:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in the log after {timeout} s")


@pytest.mark.slow
def test_the_model_packages_are_imported_only_after_serving(tmp_path):
    data = tmp_path / "data"
    paths = Paths.from_args(parse_args(["--data-dir", str(data)]))
    assert ensure_embedded_default(paths) is not None  # the first start's files, written here: this is a later start
    assert ensure_demo_loras(paths.lora_dir)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-X", "importtime", str(ROOT / "launch.py"), "--port", str(free_port()),
             "--data-dir", str(data)],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
        try:
            lines = wait_for_line(log_path, "ready to generate", process, timeout=300)
        finally:
            stop_servers(process)
    serving = next(line for line in lines if "serving on http://" in line)
    before, after = imports_before_and_after(lines, "serving on http://")
    assert "gradio" in before and "fastapi" in before, serving
    assert sorted(before & set(MODEL_PACKAGES)) == [], serving
    assert "diffusers" in after  # the model load after serving imports it: the log records imports
    assert "model tiny-sd1-demo.safetensors loaded" in "\n".join(lines)
