"""Block weights (`lbw=` vectors of every supported length, presets, `in=`/`mid=`/`out=`) and step schedules
(`start=`/`stop=`, `w@step` keyframes, text-encoder schedules) through the real engine and a real generation."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from lorakit.prompt.extra_network import LoraStepState
from modules.extra_networks import parse_prompt
from modules.host import WebUI
from modules.processing import StableDiffusionProcessingTxt2Img, process_images
from tests.helpers.handlers import P, make_handler
from tests.helpers.lora_testing import kohya_name, state_snapshot, tiny_loaded_model


def every_layer(model):
    """Every Linear/Conv2d of the UNet and text encoders: a LoRA on these touches every block."""
    found = {}
    for name, module in model.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            found[f"unet.{name}"] = module
    for index, encoder in enumerate(model.text_encoders):
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and "layers" in name:
                found[f"text_encoders.{index}.{name}"] = module
    return found


def write_lora(path, model, targets, seed=0, rank=2):
    """A kohya LoRA over `targets` (name -> module); returns the delta per layer at multiplier 1."""
    generator = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for name, module in targets.items():
        weight = module.weight
        key = kohya_name(model, name)
        down = torch.randn(rank, *weight.shape[1:], generator=generator) * 0.1
        up = torch.randn(weight.shape[0], rank, *([1, 1] if weight.dim() == 4 else []), generator=generator) * 0.1
        tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
        deltas[name] = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return deltas


def expected_block(model, name):
    """The lora-block-weight block of a layer, worked out from its LDM name independently of the engine."""
    if name.startswith("text_encoders."):
        return "BASE"
    ldm = model.ldm_unet_names[name[len("unet."):]]
    match = re.match(r"(input_blocks|middle_block|output_blocks)\.?(\d*)", ldm)
    if not match:
        return None
    if match.group(1) == "middle_block":
        return "M00"
    return ("IN" if match.group(1) == "input_blocks" else "OUT") + f"{int(match.group(2)):02d}"


SLOT_NAMES = {
    26: ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)],
    17: ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(3, 12)],
    20: ["BASE"] + [f"IN{i:02d}" for i in range(9)] + ["M00"] + [f"OUT{i:02d}" for i in range(9)],
    12: ["BASE", "IN04", "IN05", "IN07", "IN08", "M00"] + [f"OUT{i:02d}" for i in range(6)],
}


def check_factors(model, pristine, deltas, factor_of):
    for name, delta in deltas.items():
        part, path = ("unet", name[5:]) if name.startswith("unet.") else (".".join(name.split(".")[:2]), name.split(".", 2)[2])
        weight = model.torch_modules()[part].get_submodule(path).weight
        want = pristine[f"{part}.{path}.weight"] + factor_of(name) * delta
        assert torch.allclose(weight, want, rtol=1e-5, atol=1e-6), (name, factor_of(name))


@pytest.mark.parametrize("family,length", [("SD1", 26), ("SD1", 17), ("SDXL", 20), ("SDXL", 12)])
def test_lbw_vectors_scale_each_block(tmp_path, family, length):
    model = tiny_loaded_model(family)
    pristine = state_snapshot(model)
    deltas = write_lora(tmp_path / "Lora" / "all.safetensors", model, every_layer(model))
    blocks_seen = {expected_block(model, name) for name in deltas}
    assert set(SLOT_NAMES[length]) <= blocks_seen  # the LoRA really touches every block of the layout
    networks, engine = make_handler(tmp_path, model)
    values = [round(0.1 * (i + 1), 2) for i in range(length)]
    p = P(model)
    networks.activate(p, parse_prompt(f"<lora:all:0.5:lbw={','.join(map(str, values))}>")[1])
    assert p.comments == []
    by_block = dict(zip(SLOT_NAMES[length], values))
    check_factors(model, pristine, deltas, lambda n: 0.5 * by_block.get(expected_block(model, n), 1.0))
    # a preset, then SD.Next's in/mid/out (combined by multiplication with nothing else)
    networks.activate(P(model), parse_prompt("<lora:all:1:lbw=OUTALL>")[1])
    preset_layout = SLOT_NAMES[17 if family == "SD1" else 12]  # presets use the short layout; unlisted blocks keep 1
    outall = {b: (1.0 if b == "BASE" or b.startswith("OUT") else 0.0) for b in preset_layout}
    check_factors(model, pristine, deltas, lambda n: outall.get(expected_block(model, n), 1.0))
    touched = engine.activate([]).stats.touched
    networks.activate(P(model), parse_prompt("<lora:all:1:in=0.25:mid=0:out=2>")[1])
    thirds = {"unet.down_blocks.": 0.25, "unet.mid_block.": 0.0, "unet.up_blocks.": 2.0}
    check_factors(model, pristine, deltas,
                  lambda n: next((w for prefix, w in thirds.items() if n.startswith(prefix)), 1.0))
    assert touched  # removal rewrote the layers; now only changed multipliers are rewritten:
    same = engine.activate(engine.active and [a.request for a in engine.active]).stats.layers_touched
    assert same == 0


def test_wrong_lbw_length_and_unknown_preset_are_named(tmp_path):
    model = tiny_loaded_model("SD1")
    write_lora(tmp_path / "Lora" / "x.safetensors", model, dict(list(every_layer(model).items())[:3]))
    networks, engine = make_handler(tmp_path, model)
    p = P(model)
    networks.activate(p, parse_prompt("<lora:x:1:lbw=1,0,1> <lora:x:1:lbw=NOPE>")[1])
    assert "<lora:x:1:lbw=1,0,1>: lbw has 3 values; a SD1 model takes 17 or 26" in p.comments
    assert any(c.startswith("<lora:x:1:lbw=NOPE>: unknown lbw preset 'NOPE'") for c in p.comments)
    assert engine.active == []


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sched")
    ui = WebUI.create(["--data-dir", str(folder)])
    model = ui.models.get()
    targets = list(every_layer(model).items())
    unet_targets = [(n, m) for n, m in targets if n.startswith("unet.") and isinstance(m, torch.nn.Linear)]
    te_targets = [(n, m) for n, m in targets if n.startswith("text_encoders.")]
    ui.test_deltas = {
        "a": write_lora(ui.paths.lora_dir / "a.safetensors", model, dict(unet_targets[:8] + te_targets[:2]), seed=1),
        "b": write_lora(ui.paths.lora_dir / "b.safetensors", model, dict(unet_targets[20:28]), seed=2),
    }
    ui.services["lora"].registry.refresh()
    return ui


def run_with_probe(webui, prompt, steps=10):
    """Generate, recording at every step (after the Lora callback) the weight of one layer of each LoRA."""
    model = webui.models.current
    deltas = webui.test_deltas
    probes = {key: next(n for n in deltas[key] if n.startswith("unet.")) for key in deltas}
    probes["a_te"] = next(n for n in deltas["a"] if n.startswith("text_encoders."))
    seen = []

    def probe(p, step, total):
        row = {}
        for key, name in probes.items():
            part, path = ("unet", name[5:]) if name.startswith("unet.") else ("text_encoders.0", name.split(".", 2)[2])
            row[key] = model.torch_modules()[part].get_submodule(path).weight.detach().clone()
        seen.append((step, row, webui.services["lora"].patcher.last_stats.touched))

    webui.callbacks.add("process_step", probe)
    try:
        p = StableDiffusionProcessingTxt2Img(prompt=prompt, steps=steps, width=64, height=64, seed=1,
                                             sampler_name="Euler", do_not_save_samples=True)
        with webui.queue_lock:
            process_images(webui, p)
    finally:
        webui.callbacks.remove("process_step", probe)
    return seen, probes, p


def multiplier_seen(webui, pristine, key, name, weight):
    delta = webui.test_deltas[key if key != "a_te" else "a"][name]
    base = pristine[name.replace("text_encoders.0.", "text_encoders.0.") + ".weight"]
    return ((weight - base) * delta).sum().item() / (delta * delta).sum().item()


def test_start_stop_gate_and_untouched_layers(webui):
    pristine = state_snapshot(webui.models.current)
    seen, probes, p = run_with_probe(webui, "x <lora:a:1:start=3:stop=7> <lora:b:0.5>")
    a_layers = set(webui.test_deltas["a"])
    for step, row, touched in seen:
        want = 1.0 if 3 <= step < 7 else 0.0
        assert abs(multiplier_seen(webui, pristine, "a", probes["a"], row["a"]) - want) < 1e-4, step
        assert abs(multiplier_seen(webui, pristine, "b", probes["b"], row["b"]) - 0.5) < 1e-4, step
        assert set(touched) <= a_layers  # b's layers are never rewritten by the schedule
    rewrites = [step for step, _, n in p.generation_state.get(LoraStepState).history]
    assert rewrites == [0, 3, 7]  # only when the weight changes


def test_keyframes_interpolate_and_te_schedule_reencodes(webui):
    pristine = state_snapshot(webui.models.current)
    seen, probes, p = run_with_probe(webui, "x <lora:a:1:0.2@0,1@0.5:te=0.1@1,0.6@6>")
    for step, row, _ in seen:
        unet_want = 0.2 + 0.8 * min(step, 5) / 5
        te_want = 0.1 if step <= 1 else (0.6 if step >= 6 else 0.1 + 0.5 * (step - 1) / 5)
        assert abs(multiplier_seen(webui, pristine, "a", probes["a"], row["a"]) - unet_want) < 1e-4, step
        assert abs(multiplier_seen(webui, pristine, "a_te", probes["a_te"], row["a_te"]) - te_want) < 1e-4, step
    assert not p.generation_state.conditioning_stale  # the sampler re-encoded after each TE change
