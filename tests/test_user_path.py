"""The user path: the product as a user gets it from the README's first command, checked over HTTP.

A separate virtual environment is built by `VENV_DIR=venv-user ./webui.sh --install-only` alone (tests/user_venv.sh;
rebuilt from nothing when requirements.txt, requirements-nodeps.txt, constraints.txt or webui.sh change), so nothing that only the tests
install can hide a missing runtime package. Then, in that venv:
* no test-only package (requirements-test.txt) is installed, and every module of modules/ and extensions-builtin/
  imports (tests/user_path_imports.py);
* `./webui.sh --skip-install` serves on 127.0.0.1 from a fresh data dir (the embedded default and demo LoRAs are
  written); `GET /sdapi/v1/loras` lists the demo LoRAs; each one, in `<lora:NAME:0.8>`, gives an image whose infotext
  has `Lora hashes` naming it and whose pixels differ from the same seed without it; the diffusers method (an
  override setting) applies a plain LoRA through diffusers/PEFT; `GET /sdapi/v1/loaded-loras` answers;
* the server's log has no ERROR line and no Traceback, and Ctrl+C stops it cleanly.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.helpers.paths import ROOT
from tests.helpers.servers import free_port, stop_servers, wait_until_up

VENV = ROOT / os.environ.get("USER_VENV_DIR", "venv-user")  # as tests/user_venv.sh names it
PAYLOAD = {"prompt": "a lighthouse at dusk", "seed": 777, "sampler_name": "Euler a", "steps": 4,
           "width": 64, "height": 64}


def plain_env() -> dict[str, str]:
    """The environment of a user's shell: no venv active, no PYTHONPATH, the test venv's bin off PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    active = os.environ.get("VIRTUAL_ENV")
    if active:
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != f"{active}/bin")
    return env


@pytest.fixture(scope="module")
def user_venv() -> Path:
    result = subprocess.run(["bash", str(ROOT / "tests" / "user_venv.sh")], cwd=ROOT, env=plain_env(),
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return VENV


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[=<>!~\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_user_venv_has_runtime_packages_only_and_imports_every_module(user_venv):
    listed = subprocess.run([str(user_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                            capture_output=True, text=True, timeout=120, env=plain_env())
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed.stdout)}
    runtime = requirement_names(ROOT / "requirements.txt") | requirement_names(ROOT / "requirements-nodeps.txt")
    assert runtime <= installed, f"runtime packages missing: {sorted(runtime - installed)}"
    assert "torchvision" not in installed  # spandrel is installed without its declared torchvision dependency
    test_only = requirement_names(ROOT / "requirements-test.txt")
    assert not test_only & installed, f"test-only packages in the user venv: {sorted(test_only & installed)}"

    imports = subprocess.run([str(user_venv / "bin" / "python"), "-m", "tests.user_path_imports"],
                             cwd=ROOT, capture_output=True, text=True, timeout=600, env=plain_env())
    assert imports.returncode == 0, imports.stdout[-4000:] + imports.stderr[-2000:]
    assert re.search(r"imported (\d+) of \1 modules", imports.stdout), imports.stdout[-2000:]
    spandrel = subprocess.run(  # the upscaler library loads without torchvision in the user's venv
        [str(user_venv / "bin" / "python"), "-c",
         "import sys; from modules.upscalers import import_spandrel; import_spandrel(); "
         "assert 'torchvision' not in sys.modules"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=plain_env())
    assert spandrel.returncode == 0, spandrel.stderr[-2000:]


@pytest.fixture(scope="module")
def user_server(user_venv, tmp_path_factory):
    data = tmp_path_factory.mktemp("user-data")
    log_path = data / "server.log"
    port = free_port()
    env = plain_env() | {"VENV_DIR": str(user_venv)}
    with open(log_path, "w") as log:
        process = subprocess.Popen(["./webui.sh", "--skip-install", "--port", str(port), "--data-dir", str(data)],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(base + "/sdapi/v1/progress", process, timeout=240)
        yield base, process, log_path
    finally:
        stop_servers(process)


def generate(base: str, prompt: str, **extra) -> tuple[np.ndarray, str]:
    response = httpx.post(base + "/sdapi/v1/txt2img", timeout=300, json=PAYLOAD | {"prompt": prompt} | extra)
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return np.asarray(image.convert("RGB"), dtype=np.int16), image.info["parameters"]


def test_user_install_applies_every_demo_lora_over_http(user_server):
    base, process, log_path = user_server
    loras = httpx.get(base + "/sdapi/v1/loras", timeout=60).json()
    names = sorted(item["name"] for item in loras)
    assert len(names) >= 10 and "demo_lora" in names, names

    plain, plain_info = generate(base, PAYLOAD["prompt"])
    assert "Lora hashes" not in plain_info
    for name in names:
        pixels, info = generate(base, f"{PAYLOAD['prompt']} <lora:{name}:0.8>")
        hashes = re.search(r'Lora hashes: "([^"]*)"', info)
        assert hashes and re.search(rf"(^|, ){re.escape(name)}: [0-9a-f]{{12}}($|,)", hashes.group(1)), info
        assert np.abs(pixels - plain).mean() > 0.5, f"{name} did not change the image"

    native, _ = generate(base, f"{PAYLOAD['prompt']} <lora:demo_lora:0.8>")
    via_diffusers, info = generate(base, f"{PAYLOAD['prompt']} <lora:demo_lora:0.8>",
                                   override_settings={"lora_method": "diffusers"})
    assert "Lora method: diffusers" in info and "applied with native merge" not in info, info
    assert np.abs(via_diffusers - native).max() <= 2

    loaded = httpx.get(base + "/sdapi/v1/loaded-loras", timeout=60)
    assert loaded.status_code == 200 and [x["name"] for x in loaded.json()] == ["demo_lora"]
    assert loaded.json()[0]["method"] == "diffusers"

    stop_servers(process)
    assert process.returncode == 0
    log = log_path.read_text(errors="replace")
    bad = [line for line in log.splitlines() if "ERROR" in line or "Traceback" in line]
    assert not bad, "\n".join(bad[:20]) + "\n---\n" + log[-4000:]
