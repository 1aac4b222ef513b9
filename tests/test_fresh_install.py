"""What a fresh install depends on, tested where it is decided (the user path itself: tests/test_user_path.py).

* Without peft (the package made unimportable in that process) the native method still applies LoRAs, the setting's
  comment says why diffusers is unavailable, and a LoRA asked for with the diffusers method is merged natively with
  that reason under the image.
* A failure of the engine's start-up is named once in the console, under every generation that asks for a LoRA
  ("the Lora engine failed to start: ..."), and by `GET /sdapi/v1/loaded-loras` (503); never "no model is loaded".
* The same input gives the same bytes: the embedded default checkpoint, the demo LoRAs and tiny SD2/SDXL single files
  are byte-identical across processes with different hash seeds.
* Atomic writes keep permissions: a saved sidecar keeps 0644 (and 0664 stays 0664); a new file gets the umask's
  default, not the 0600 of a temporary file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import torch

from lorakit.library import sidecars
from lorakit.library.registry import NetworkRegistry
from modules.atomic_io import process_umask, write_json_atomic
from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from modules.webui_server import ServerThread, create_app, load_startup_model
from tests.helpers.paths import LORA_DIR, ROOT


def run_python(code: str, env_extra: dict[str, str] | None = None, timeout: int = 300) -> str:
    """Run `code` in a fresh interpreter with the repo importable and the Lora extension offering its imports as the
    extension loader does; returns its stdout."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    code = f"from modules.extensions import EXTENSION_IMPORTS\nEXTENSION_IMPORTS.offer(__import__('pathlib')" \
           f".Path({str(LORA_DIR)!r}))\n" + textwrap.dedent(code)
    env |= env_extra or {}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout


GENERATE = """
    import sys
    {prelude}
    from modules.host import WebUI
    from modules.processing import StableDiffusionProcessingTxt2Img, process_images
    from modules.webui_server import load_startup_model
    webui = WebUI.create(["--data-dir", "{data}", "--nowebui"])
    load_startup_model(webui)
    {before}
    p = StableDiffusionProcessingTxt2Img(prompt="a lighthouse <lora:demo_lora:0.8>", seed=5, steps=2, width=64,
                                         height=64, sampler_name="Euler", do_not_save_samples=True)
    processed = process_images(webui, p)
    print("INFOTEXT", processed.infotexts[0].replace("\\n", " | "))
    print("COMMENTS", " | ".join(processed.comments))
"""


def test_without_peft_the_native_method_works_and_the_setting_says_why(tmp_path):
    # `sys.modules["peft"] = None` makes `import peft` fail and `find_spec("peft")` find nothing, as when it is not
    # installed; the extension's own code runs unchanged.
    before = """
    print("COMMENT", webui.options.infos["lora_method"].comment)
    webui.options.set("lora_method", "diffusers")
    """
    out = run_python(GENERATE.format(prelude='sys.modules["peft"] = None', data=tmp_path, before=before))
    comment = next(line for line in out.splitlines() if line.startswith("COMMENT"))
    assert "diffusers is unavailable: the diffusers LoRA method needs the package peft" in comment, out
    infotext = next(line for line in out.splitlines() if line.startswith("INFOTEXT"))
    assert 'Lora hashes: "demo_lora: ' in infotext, out
    comments = next(line for line in out.splitlines() if line.startswith("COMMENTS"))
    assert "demo_lora: applied with native merge: the diffusers LoRA method needs the package peft" in comments, out


def test_an_engine_start_failure_is_named_once_and_in_every_generation(tmp_path, caplog):
    webui = WebUI.create(["--data-dir", str(tmp_path), "--nowebui"])
    load_startup_model(webui)
    engine = webui.services["lora"]
    model = webui.models.current
    # A model the engine cannot index (its text encoders are gone): a fault in the engine's start-up.
    text_encoders = model.text_encoders
    model.text_encoders = None
    caplog.set_level(logging.INFO)
    try:
        webui.callbacks.run("model_loaded", model)
    finally:
        model.text_encoders = text_encoders
    started = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(started) == 1 and "the Lora engine failed to start" in started[0].getMessage()
    assert started[0].exc_info is not None  # the traceback is in the console, once
    assert engine.failure is not None and engine.failure.startswith("TypeError")

    caplog.clear()
    for _ in range(2):
        p = StableDiffusionProcessingTxt2Img(prompt="x <lora:demo_lora:1>", seed=1, steps=1, width=64,
                                             height=64, sampler_name="Euler", do_not_save_samples=True)
        processed = process_images(webui, p)
        assert f"the Lora engine failed to start: {engine.failure}" in processed.comments
        assert not [c for c in processed.comments if "no model is loaded" in c]
        assert "Lora hashes" not in processed.infotexts[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # named once, at start

    thread = ServerThread(create_app(webui, ui=False)).start()
    try:
        response = httpx.get(f"http://127.0.0.1:{thread.port}/sdapi/v1/loaded-loras", timeout=30)
    finally:
        thread.stop()
    assert response.status_code == 503
    assert response.json()["detail"] == f"the Lora engine failed to start: {engine.failure}"

    def broken_extension(p):
        raise KeyError("sampler_index")

    webui.callbacks.add("before_process", broken_extension)  # any extension callback: named under the image
    p = StableDiffusionProcessingTxt2Img(prompt="x", seed=1, steps=1, width=64, height=64,
                                         sampler_name="Euler", do_not_save_samples=True)
    assert ("callback test_an_engine_start_failure_is_named_once_and_in_every_generation.<locals>.broken_extension "
            "for before_process failed: KeyError: 'sampler_index'") in process_images(webui, p).comments
    webui.callbacks.remove("before_process", broken_extension)

    webui.callbacks.run("model_loaded", model)  # the next model load starts the engine again
    assert engine.failure is None
    p = StableDiffusionProcessingTxt2Img(prompt="x <lora:demo_lora:1>", seed=1, steps=1, width=64, height=64,
                                         sampler_name="Euler", do_not_save_samples=True)
    assert 'Lora hashes: "demo_lora: ' in process_images(webui, p).infotexts[0]


WRITE_FILES = """
    import hashlib
    from pathlib import Path
    from types import SimpleNamespace
    from lorakit.library import demo_loras
    from modules.embedded_default import ensure_embedded_default
    from modules.tiny_models import write_single_file
    root = Path("{folder}")
    ensure_embedded_default(SimpleNamespace(ckpt_dir=root / "ckpt"))
    demo_loras.ensure_demo_loras(root / "lora")
    write_single_file(root / "sd2.safetensors", "SD2", seed=3, v_prediction=True)
    write_single_file(root / "sdxl.safetensors", "SDXL", seed=3)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            print(path.relative_to(root), hashlib.sha256(path.read_bytes()).hexdigest())
"""


def test_the_same_input_gives_the_same_bytes_in_every_process(tmp_path):
    runs = []
    for seed in ("1", "2"):
        folder = tmp_path / f"run{seed}"
        runs.append(run_python(WRITE_FILES.format(folder=folder), {"PYTHONHASHSEED": seed}).splitlines())
    assert runs[0] == runs[1]
    names = [line.split()[0] for line in runs[0]]
    assert "ckpt/tiny-sd1-demo.safetensors" in names and "sd2.safetensors" in names
    assert sum(name.startswith("lora/") and name.endswith(".safetensors") for name in names) == 10


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_saved_sidecar_keeps_its_mode_and_new_files_get_the_umask_default(tmp_path):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    from safetensors.torch import save_file  # noqa: PLC0415

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1, 1)}, str(lora_dir / "style.safetensors"))
    sidecar = lora_dir / "style.json"
    sidecar.write_text(json.dumps({"description": "old"}))
    registry = NetworkRegistry([lora_dir], None)
    registry.refresh()
    entry = registry.find("style")
    for wanted in (0o644, 0o664, 0o600):
        os.chmod(sidecar, wanted)
        sidecars.save_user_metadata(entry, {"description": f"mode {wanted:o}"}, [lora_dir])
        assert mode(sidecar) == wanted
        assert json.loads(sidecar.read_text())["description"] == f"mode {wanted:o}"

    old = os.umask(0o022)
    try:
        assert process_umask() == 0o022
        write_json_atomic(tmp_path / "new.json", {"a": 1})
        assert mode(tmp_path / "new.json") == 0o644
        os.umask(0o002)
        write_json_atomic(tmp_path / "newer.json", {"a": 1})
        assert mode(tmp_path / "newer.json") == 0o664
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_embedded_default_gets_the_umask_default(tmp_path, umask):
    old = os.umask(umask)
    try:
        from types import SimpleNamespace  # noqa: PLC0415

        from modules.embedded_default import ensure_embedded_default  # noqa: PLC0415

        written = ensure_embedded_default(SimpleNamespace(ckpt_dir=tmp_path))
    finally:
        os.umask(old)
    assert written is not None and mode(written) == 0o666 & ~umask
    assert hashlib.sha256(written.read_bytes()).hexdigest()  # readable, whole
