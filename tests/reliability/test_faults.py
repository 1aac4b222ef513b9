"""Faults injected on purpose, each counted with `ledger.fault()`; after each, nothing is lost.

* An exception inside one layer's delta computation (a loaded network module instance made to raise): that network is
  dropped with a message naming it and the layer, the other networks stay applied exactly, and once the fault is
  gone the network applies again.
* An interrupt, and an exception inside the UNet, in the middle of a real txt2img with a scheduled LoRA: the next
  generation without LoRAs sees bitwise pristine weights and the pristine image; the next one with the LoRA gives
  the same image as before the fault.
* A LoRA deleted and another rewritten between the registry scan and the load (and after a load): a clear error
  for the deleted one; the rewritten one applies its new content and `Lora hashes` records its new hash.
* A full disk (the write fails half-way, or fsync, or the rename) and a crash (the writing process SIGKILLed
  half-way) while writing config.json, cache.json and a sidecar JSON: the previous file survives byte-identical, the
  product says which file was not written (options and sidecars: an error naming the file, the API's 422
  `MetadataNotWritten`; cache: a warning, and the scan and the LoRAs go on), no temporary file is left by a failed
  write, and the one a crash leaves is ignored.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library import sidecars as user_metadata
from lorakit.library.registry import NetworkRegistry
from lorakit.web.api import LoraApi, LoraMetadataRequest
from modules.api.api import ApiError
from modules.cache import DiskCache
from modules.hashes import safetensors_payload_sha256
from modules.host import WebUI
from modules.options import Options
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.corpus import sum_deltas, weights_problems
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora
from tests.helpers.paths import ROOT

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger



def engine_for(folder: Path, model: Any) -> LoraEngine:
    registry = NetworkRegistry([folder], DiskCache(folder.parent / "cache.json"))
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    return engine


# ---------------------------------------------------------------------------------------------------------------
# (a) an exception inside one layer's delta computation
# ---------------------------------------------------------------------------------------------------------------

FAULTS: list[Callable[[str], BaseException]] = [
    lambda layer: RuntimeError(f"injected fault in {layer}"),
    lambda layer: MemoryError(f"injected fault in {layer}"),
    lambda layer: torch.OutOfMemoryError(f"injected fault in {layer}"),
    lambda layer: ZeroDivisionError(f"injected fault in {layer}"),
]


def test_a_layer_that_fails_at_delta_time_drops_only_its_network(tmp_path: Path, ledger: Ledger,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Faults (RuntimeError, MemoryError, torch.OutOfMemoryError, ZeroDivisionError) injected when the victim is
    applied for the first time and when its multiplier changes (its layers hold it already); quick form: on a layer
    the good LoRA patches too and on one only the victim patches, full form: on every victim layer. Every round
    runs; a round whose activation raises, or leaves wrong weights, is reported at the end."""
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    folder = tmp_path / "Lora"
    good = write_kohya_lora(folder / "good.safetensors", model, seed=1, only=8)
    victim = write_kohya_lora(folder / "victim.safetensors", model, seed=2, only=14)  # 8 layers shared with good
    third = write_kohya_lora(folder / "third.safetensors", model, seed=3, conv=True, text_encoder=False)
    engine = engine_for(folder, model)
    others = [NetworkRequest("good", 1.0, 1.0), NetworkRequest("third", 1.0, 1.0)]
    engine.activate([others[0], NetworkRequest("victim", 0.5, 0.5), others[1]])
    network = next(a.network for a in engine.active if a.network.name == "victim")
    layers = list(victim)
    # quick form: a layer good also patches and one only the victim patches; full form: every victim layer
    chosen = layers if ledger.full else [layers[0], layers[-1], layers[0], layers[-1]]
    rounds = [(layer, FAULTS[i % len(FAULTS)], first) for first in (True, False) for i, layer in enumerate(chosen)]
    problems = []
    for number, (layer, fault, first) in enumerate(rounds):
        if first:
            engine.activate(others)  # the victim is not applied when the fault strikes
        module = network.modules[layer]

        def boom(*args: Any, layer: str = layer, fault: Callable[[str], BaseException] = fault, **kwargs: Any) -> Any:
            raise fault(layer)

        multiplier = round(0.6 + 0.05 * number, 2)  # a new multiplier: every victim layer must be rewritten
        wanted = [others[0], NetworkRequest("victim", multiplier, multiplier), others[1]]
        label = f"round {number} ({'first application' if first else 'new multiplier'}, {layer})"
        with monkeypatch.context() as patch:
            patch.setattr(module, "low_rank", boom)  # this instance only, not the class
            patch.setattr(module, "calc_delta", boom)
            ledger.fault()
            try:
                report = engine.activate(wanted)
            except Exception as exc:  # the product must not let it out
                problems.append(f"{label}: activate raised {type(exc).__name__}: {exc}")
            else:
                if report.errors != {"victim": f"failed on layer {layer}: injected fault in {layer}"} or \
                        [a.network.name for a in report.active] != ["good", "third"]:
                    problems.append(f"{label}: errors {report.errors}, active {[a.network.name for a in report.active]}")
        wrong = weights_problems(model, pristine, sum_deltas((good, 1.0), (third, 1.0)))
        try:
            ledger.intact(not wrong, f"{label}: weights {wrong[:2]}")
        except pytest.fail.Exception as exc:  # recorded in the ledger; the next rounds still run
            problems.append(str(exc))
        report = engine.activate(wanted)  # the fault is gone: it applies again
        wrong = weights_problems(model, pristine, sum_deltas((good, 1.0), (victim, multiplier), (third, 1.0)))
        if report.errors or wrong:
            problems.append(f"{label}, fault gone: errors {report.errors}, weights {wrong[:2]}")
    engine.deactivate_all()
    ledger.intact(not weights_problems(model, pristine, {}), "deactivate_all after the delta faults")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------------------------
# (b) an interrupt and an exception in the middle of a generation
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def webui(tmp_path_factory: pytest.TempPathFactory) -> WebUI:
    ui = WebUI.create(["--data-dir", str(tmp_path_factory.mktemp("faults-webui"))])
    ui.models.get()
    return ui


def generate(webui: WebUI, prompt: str, on_step: Callable[[Any, int, int], None] | None = None) -> Any:
    p = StableDiffusionProcessingTxt2Img(prompt=prompt, seed=7, steps=6, width=64, height=64, sampler_name="Euler",
                                         do_not_save_samples=True)
    if on_step is not None:
        webui.callbacks.add("process_step", on_step)
    try:
        with webui.queue_lock:
            return process_images(webui, p)
    finally:
        if on_step is not None:
            webui.callbacks.remove("process_step", on_step)


def pixels(processed: Any) -> np.ndarray:
    return np.asarray(processed.images[0], dtype=np.int16)


# keyframes (the weights change at every step) and a second LoRA of another algorithm
SCHEDULED = "a cat <lora:demo_lora:0.2@0,1@5> <lora:demo_loha:0.8:stop=4>"


def test_an_interrupt_mid_generation_loses_nothing(webui: WebUI, ledger: Ledger) -> None:
    """Quick form: interrupted at step 3 of 6; full form: at every step but the last."""
    model = webui.models.current
    pristine = state_snapshot(model)
    plain = pixels(generate(webui, "a cat"))
    reference = pixels(generate(webui, SCHEDULED))
    assert np.abs(reference - plain).max() > 0
    for at_step in range(5) if ledger.full else [3]:  # a flag set at the last step (5) is seen by no later step
        def interrupt(p: Any, step: int, total: int, at_step: int = at_step) -> None:
            if step == at_step:
                webui.state.interrupt()

        ledger.fault()
        interrupted = generate(webui, SCHEDULED, interrupt)
        assert interrupted.interrupted and not webui.state.active  # the job ended
        assert len(interrupted.images) == 1  # A1111 returns the image denoised so far
        again_plain = generate(webui, "a cat")
        ledger.intact(not weights_problems(model, pristine, {}), f"weights after an interrupt at step {at_step}")
        ledger.intact(bool(np.array_equal(pixels(again_plain), plain)), f"plain image after an interrupt at {at_step}")
        again = generate(webui, SCHEDULED)
        assert not again.interrupted
        ledger.intact(bool(np.array_equal(pixels(again), reference)), f"LoRA image after an interrupt at {at_step}")


def test_an_exception_inside_the_unet_mid_generation_loses_nothing(webui: WebUI, ledger: Ledger,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model = webui.models.current
    generate(webui, "a cat")
    pristine = state_snapshot(model)
    plain = pixels(generate(webui, "a cat"))
    reference = pixels(generate(webui, SCHEDULED))
    calls = []
    real_forward = model.unet.forward

    def failing_forward(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected fault: out of memory in the UNet")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(model.unet, "forward", failing_forward)  # this UNet instance only
    ledger.fault()
    with pytest.raises(RuntimeError, match="injected fault: out of memory in the UNet"):
        generate(webui, SCHEDULED)
    monkeypatch.undo()
    assert not webui.state.active  # the job state was ended
    ledger.intact(bool(np.array_equal(pixels(generate(webui, "a cat")), plain)), "image without LoRAs after the fault")
    ledger.intact(not weights_problems(model, pristine, {}), "weights after the UNet fault and a LoRA-less run")
    ledger.intact(bool(np.array_equal(pixels(generate(webui, SCHEDULED)), reference)), "image with LoRAs after it")


# ---------------------------------------------------------------------------------------------------------------
# (c) files deleted or rewritten between the scan and the load
# ---------------------------------------------------------------------------------------------------------------

def test_files_deleted_or_rewritten_after_the_scan(tmp_path: Path, ledger: Ledger) -> None:
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    folder = tmp_path / "Lora"
    write_kohya_lora(folder / "gone.safetensors", model, seed=1, only=5)
    write_kohya_lora(folder / "changed.safetensors", model, seed=2, only=5)
    steady = write_kohya_lora(folder / "steady.safetensors", model, seed=3, only=5)
    write_kohya_lora(folder / "loaded_gone.safetensors", model, seed=4, only=3)
    engine = engine_for(folder, model)
    report = engine.activate([NetworkRequest("changed"), NetworkRequest("loaded_gone")])  # loaded and hashed
    old_hash = engine.registry.find("changed").shorthash
    assert report.errors == {} and old_hash

    (folder / "gone.safetensors").unlink()
    (folder / "loaded_gone.safetensors").unlink()
    new = write_kohya_lora(folder / "changed.safetensors", model, seed=9, only=5)  # same shapes, new values
    ledger.fault(3)
    report = engine.activate([NetworkRequest("gone"), NetworkRequest("changed"), NetworkRequest("steady"),
                              NetworkRequest("loaded_gone")])
    assert set(report.errors) == {"gone", "loaded_gone"}
    assert "No such file or directory" in report.errors["gone"] and "gone.safetensors" in report.errors["gone"]
    assert "loaded_gone.safetensors" in report.errors["loaded_gone"]  # not served from memory
    assert [a.network.name for a in report.active] == ["changed", "steady"]
    wrong = weights_problems(model, pristine, sum_deltas((new, 1.0), (steady, 1.0)))
    ledger.intact(not wrong, f"the rewritten LoRA's new content: {wrong[:3]}")
    new_hash = safetensors_payload_sha256(folder / "changed.safetensors")[:12]
    assert new_hash != old_hash
    ledger.intact(engine.registry.find("changed").shorthash == new_hash, "the Lora hash of the rewritten file")

    # rewritten again, now with another rank (another size), while it is active
    newer = write_kohya_lora(folder / "changed.safetensors", model, seed=10, rank=2, only=6)
    ledger.fault()
    engine.activate([NetworkRequest("changed"), NetworkRequest("steady")])
    wrong = weights_problems(model, pristine, sum_deltas((newer, 1.0), (steady, 1.0)))
    ledger.intact(not wrong, f"the LoRA rewritten while active: {wrong[:3]}")
    engine.deactivate_all()
    ledger.intact(not weights_problems(model, pristine, {}), "deactivate_all after the vanished files")


# ---------------------------------------------------------------------------------------------------------------
# (d) a full disk and a crash while writing config.json, cache.json and a sidecar
# ---------------------------------------------------------------------------------------------------------------

class _HalfWriter:
    """A file object whose `write` puts half the bytes on disk, then fails as a full disk does."""

    def __init__(self, handle: Any, seen: list[Path]) -> None:
        self._handle, self._seen = handle, seen

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        self._handle.flush()
        self._seen.append(Path(os.readlink(f"/proc/self/fd/{self._handle.fileno()}")))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@contextmanager
def failing_writes(monkeypatch: pytest.MonkeyPatch, point: str) -> Iterator[list[Path]]:
    """Inside the block every atomic write fails at `point`: "write" (half the bytes reach the temporary file, then
    ENOSPC), "fsync" (EIO) or "replace" (ENOSPC). Yields the temporary files that held partial data."""
    seen: list[Path] = []
    real_fdopen = os.fdopen

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        return _HalfWriter(real_fdopen(fd, *args, **kwargs), seen)

    def fail(error: int) -> Callable[..., None]:
        def raiser(*args: Any, **kwargs: Any) -> None:
            raise OSError(error, os.strerror(error))
        return raiser

    with monkeypatch.context() as patch:
        if point == "write":
            patch.setattr(os, "fdopen", fdopen)
        elif point == "fsync":
            patch.setattr(os, "fsync", fail(errno.EIO))
        else:
            patch.setattr(os, "replace", fail(errno.ENOSPC))
        yield seen


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


POINTS = ["write", "fsync", "replace"]
STRERROR = {"write": "No space left on device", "fsync": "Input/output error", "replace": "No space left on device"}


@pytest.mark.parametrize("point", POINTS)
def test_a_failed_config_write_keeps_config_json_and_the_values(tmp_path: Path, point: str, ledger: Ledger,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.json"
    options = Options(path)
    options.add("steps", 20, "Steps")
    options.add("name", "x", "Name")
    options.set("steps", 25)
    before = path.read_bytes()
    with failing_writes(monkeypatch, point) as partial:
        ledger.fault()
        with pytest.raises(OSError) as raised:
            options.set("steps", 30)
        ledger.fault()
        with pytest.raises(OSError):
            options.update({"steps": 31, "name": "y"})
    assert raised.value.strerror == STRERROR[point] and raised.value.filename == str(path)
    assert f"{STRERROR[point]}: '{path}'" in str(raised.value)  # what the user reads names config.json
    ledger.intact(path.read_bytes() == before, f"config.json after a failed write at {point}")
    assert leftovers(tmp_path) == [] and all(not p.exists() for p in partial)
    assert (options.get("steps"), options.get("name")) == (25, "x")  # memory agrees with the file
    assert Options(path).get("steps") == 25
    options.set("steps", 32)  # the disk has room again
    assert Options(path).get("steps") == 32


@pytest.mark.parametrize("point", POINTS)
def test_a_failed_cache_write_keeps_cache_json_and_loras_work(tmp_path: Path, point: str, ledger: Ledger,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    model = tiny_loaded_model("SD1")
    pristine = state_snapshot(model)
    folder = tmp_path / "Lora"
    first = write_kohya_lora(folder / "first.safetensors", model, seed=1, only=4)
    engine = engine_for(folder, model)
    engine.activate([NetworkRequest("first")])  # hashed: cache.json holds metadata and the hash
    path = tmp_path / "cache.json"
    before = path.read_bytes()
    second = write_kohya_lora(folder / "second.safetensors", model, seed=2, only=4)  # new: scan + hash write the cache
    with failing_writes(monkeypatch, point) as partial, caplog.at_level(logging.WARNING, logger="modules.cache"):
        ledger.fault()
        report = engine.activate([NetworkRequest("first"), NetworkRequest("second")])
    assert report.errors == {} and [a.network.name for a in report.active] == ["first", "second"]
    assert f"{path} not saved ({STRERROR[point]}); it will be written at the next save" in caplog.messages
    ledger.intact(path.read_bytes() == before, f"cache.json after a failed write at {point}")
    assert leftovers(tmp_path) == [] and all(not p.exists() for p in partial)
    wrong = weights_problems(model, pristine, sum_deltas((first, 1.0), (second, 1.0)))
    ledger.intact(not wrong, f"weights while cache.json cannot be written: {wrong[:3]}")
    engine.registry.refresh()  # the disk has room again: the next save writes what was kept in memory
    second_file = str(folder / "second.safetensors")
    assert DiskCache(path).get("lora-metadata", second_file) is not None
    engine.deactivate_all()


@pytest.mark.parametrize("point", POINTS)
def test_a_failed_sidecar_write_keeps_the_sidecar(webui: WebUI, point: str, ledger: Ledger,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    engine = webui.services["lora"]
    entry = engine.registry.find("demo_lora")
    sidecar = entry.sidecar_path()
    before = sidecar.read_bytes()
    in_memory = dict(entry.user_metadata)
    api = LoraApi(webui, engine)
    with failing_writes(monkeypatch, point) as partial:
        ledger.fault()
        with pytest.raises(OSError) as raised:
            user_metadata.save_user_metadata(entry, {"notes": "lost?"})
        ledger.fault()
        with pytest.raises(ApiError) as api_error:
            api.edit_metadata(LoraMetadataRequest(name="demo_lora", notes="lost too?"))
    assert raised.value.filename == str(sidecar) and raised.value.strerror == STRERROR[point]
    assert (api_error.value.status_code, api_error.value.error) == (422, "MetadataNotWritten")
    assert api_error.value.detail == f"demo_lora.json: {STRERROR[point]}"
    ledger.intact(sidecar.read_bytes() == before, f"the sidecar after a failed write at {point}")
    assert leftovers(sidecar.parent) == [] and all(not p.exists() for p in partial)
    assert entry.user_metadata == in_memory and user_metadata.read_user_metadata(entry) == in_memory


CRASH = """
import os, signal, sys
from pathlib import Path
from modules.extensions import EXTENSION_IMPORTS  # run with cwd = the repository root
EXTENSION_IMPORTS.offer(Path({lora!r}))
real_fdopen = os.fdopen

class Dying:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return False
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies half-way through the write

os.fdopen = lambda fd, *a, **k: Dying(real_fdopen(fd, *a, **k))
{action}
"""

CRASH_ACTIONS = {
    "config.json": """
from modules.options import Options
options = Options(Path({path!r}))
options.add("steps", 20, "Steps")
options.set("steps", 99)
""",
    "cache.json": """
from modules.cache import DiskCache
DiskCache(Path({path!r})).set("hashes", {lora_file!r}, "new value")
""",
    "sidecar": """
from lorakit.library import sidecars as user_metadata
from lorakit.library.registry import NetworkRegistry
registry = NetworkRegistry([Path({lora_file!r}).parent], None)
registry.refresh()
user_metadata.save_user_metadata(registry.find("style"), {{"notes": "written by a process that died"}})
""",
}


@pytest.mark.parametrize("target", list(CRASH_ACTIONS))
def test_a_crash_mid_write_keeps_the_previous_file(tmp_path: Path, target: str, ledger: Ledger) -> None:
    """The previous file is written by the product, then a process that writes a new one is killed half-way."""
    lora = tmp_path / "Lora" / "style.safetensors"
    lora.parent.mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    config, cache_file = tmp_path / "config.json", tmp_path / "cache.json"

    def options() -> Options:
        store = Options(config)
        store.add("steps", 20, "Steps")
        return store

    def registry() -> NetworkRegistry:
        found = NetworkRegistry([lora.parent], None)
        found.refresh()
        return found

    if target == "config.json":
        path = config
        options().set("steps", 25)
    elif target == "cache.json":
        path = cache_file
        DiskCache(path).set("hashes", lora, "old value")
    else:
        path = lora.with_suffix(".json")
        user_metadata.save_user_metadata(registry().find("style"), {"notes": "before"})
    before = path.read_bytes()
    code = CRASH.format(lora=str(ROOT / "extensions-builtin" / "Lora"),
                        action=CRASH_ACTIONS[target].format(path=str(path), lora_file=str(lora)))
    ledger.fault()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == -signal.SIGKILL, result.stderr
    ledger.intact(path.read_bytes() == before, f"{target} after a crash mid-write")
    left = leftovers(path.parent)
    assert len(left) == 1 and left[0].startswith(f".{path.name}.")  # the dead process's partial temporary file
    # it is harmless: readers ignore it, and the next write succeeds beside it
    if target == "config.json":
        assert options().get("steps") == 25
        options().set("steps", 26)
        assert options().get("steps") == 26
    elif target == "cache.json":
        assert DiskCache(path).get("hashes", lora) == "old value"
        DiskCache(path).set("hashes", lora, "newer value")
        assert DiskCache(path).get("hashes", lora) == "newer value"
    else:
        found = registry()
        assert [e.name for e in found.entries()] == ["style"] and found.errors == {}
        assert found.find("style").user_metadata == {"notes": "before"}
        user_metadata.save_user_metadata(found.find("style"), {"notes": "after"})
        assert registry().find("style").user_metadata == {"notes": "after"}
