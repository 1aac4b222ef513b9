"""One set of finiteness and magnitude checks for every application method, and black images reported.

* alpha = NaN: refused by native merge, and now by the diffusers fallback and the diffusers method too (it used to be
  applied by the fallback: an all-black image). The report names the file; no adapter layer is left injected; the
  other LoRA applies exactly.
* Huge finite factors (1e6 per entry: finite merged weights of ~1e12, a black image): refused by native merge and by
  diffusers with "absurdly large".
* A generation whose latents turn NaN (a NaN forced into the UNet's output bias, standing for any cause) is reported
  under the image: "Image 1 is black ...", naming the prompt's LoRAs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lorakit.algorithms import weight_checks
from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.corpus import weights_problems
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora

if TYPE_CHECKING:
    from tests.helpers.ledger import Ledger


def rewrite(source: Path, target: Path, change: dict[str, object]) -> None:
    """`target` = `source` with every tensor whose name ends with a key of `change` replaced (a value or a factor)."""
    tensors = load_file(source)
    for key in list(tensors):
        for suffix, how in change.items():
            if key.endswith(suffix):
                tensors[key] = torch.full_like(tensors[key], float(how)) if suffix == ".alpha" else tensors[key] * how
    save_file(tensors, target)


@pytest.fixture
def folder(tmp_path: Path) -> tuple[object, dict, Path, dict]:
    model = tiny_loaded_model("SD1", seed=4)
    lora_dir = tmp_path / "Lora"
    good = write_kohya_lora(lora_dir / "good.safetensors", model, seed=1, only=6)
    write_kohya_lora(tmp_path / "base.safetensors", model, seed=2, only=8)
    rewrite(tmp_path / "base.safetensors", lora_dir / "nan_alpha.safetensors", {".alpha": float("nan")})
    rewrite(tmp_path / "base.safetensors", lora_dir / "huge.safetensors", {"lora_up.weight": 1e7,
                                                                         "lora_down.weight": 1e7})
    return model, state_snapshot(model), lora_dir, good


@pytest.mark.parametrize("method", ["native", "diffusers"])
@pytest.mark.parametrize("victim", ["nan_alpha", "huge"])
def test_every_method_refuses_nan_and_absurd_weights(folder: tuple, method: str, victim: str,
                                                      ledger: Ledger) -> None:
    model, pristine, lora_dir, good = folder
    registry = NetworkRegistry([lora_dir], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    report = engine.activate([NetworkRequest(victim), NetworkRequest("good")], method=method)
    ledger.bad_input()
    assert victim in report.errors, (report.errors, [a.network.name for a in report.active])
    message = report.errors[victim]
    assert ("NaN" in message) if victim == "nan_alpha" else ("absurdly large" in message), message
    assert [a.network.name for a in report.active] == ["good"]
    engine.activate([NetworkRequest("good")], method="native")  # one method for the comparison below
    wrong = weights_problems(model, pristine, good)
    ledger.intact(not wrong, f"{victim} under {method}: pristine + exactly the good LoRA: {wrong[:3]}")


def test_the_limits_are_one_set() -> None:
    assert weight_checks.bound_problem(float("nan")) == "its delta has NaN or Inf values"
    assert weight_checks.bound_problem(2e4) is not None and weight_checks.bound_problem(50.0) is None
    assert weight_checks.merged_problem(float("nan"), 1.0, torch.float32) is not None
    assert weight_checks.merged_problem(1e5, 1.0, torch.float32) is not None
    assert weight_checks.merged_problem(3.0, 1.0, torch.float32) is None
    assert weight_checks.scalar_problem("alpha", float("inf")) == "alpha is inf, not a finite number"


def test_a_black_generation_is_reported_naming_the_loras(tmp_path: Path, ledger: Ledger) -> None:
    webui = WebUI.create(["--data-dir", str(tmp_path)])
    model = webui.models.get()
    bias = model.unet.conv_out.bias
    saved = bias.detach().clone()
    p = StableDiffusionProcessingTxt2Img(prompt="a cat <lora:demo_lora:0.5>", seed=3, steps=3, width=64, height=64,
                                         sampler_name="Euler", do_not_save_samples=True)
    with torch.no_grad():
        bias[0] = float("nan")
    ledger.fault()
    try:
        with webui.queue_lock:
            processed = process_images(webui, p)
    finally:
        with torch.no_grad():
            bias.copy_(saved)
    assert int(np.asarray(processed.images[0]).max()) == 0  # the image really is black
    comments = "\n".join(processed.comments)
    assert "Image 1 is black: its latents hold NaN/Inf values" in comments and "lora:demo_lora" in comments
    clean = StableDiffusionProcessingTxt2Img(prompt="a cat <lora:demo_lora:0.5>", seed=3, steps=3, width=64,
                                             height=64, sampler_name="Euler", do_not_save_samples=True)
    with webui.queue_lock:
        again = process_images(webui, clean)
    assert not any("is black" in c for c in again.comments) and int(np.asarray(again.images[0]).max()) > 0
