"""Files written by the LyCORIS library, applied through the WebUI path (tags -> engine -> patched model) and through
the merge tool, give LyCORIS' own inference weights within 1e-5 relative error (float32), on tiny SD1 and SDXL
checkpoints loaded from real single-file layouts."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from lorakit.engine.engine import LoraEngine
from lorakit.library.registry import NetworkRegistry
from lorakit.prompt import extra_network as extra_networks_lora
from lorakit.tools.merge import merge
from modules.extra_networks import ExtraNetworkRegistry, parse_prompt
from modules.generation_state import GenerationState
from modules.options import Options
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import load_checkpoint
from tests.helpers.lora_testing import assert_bitwise_equal, state_snapshot
from tests.helpers.lycoris_reference import write_lycoris_file
from tests.helpers.model_factory import write_single_file

ALGOS = ["lora", "locon", "tucker", "loha", "loha-tucker", "lokr", "lokr-tucker", "ia3", "glora", "diag-oft", "boft",
         "full", "dora", "norm"]
MULTIPLIERS = (1.0, 0.7)


def load(path):
    return load_checkpoint(CheckpointInfo(path=path, name=path.name, format="single-file"), "cpu", torch.float32)


@pytest.fixture(scope="module", params=["SD1", "SDXL"])
def setup(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    ckpt = write_single_file(folder / "model.safetensors", request.param, seed=1)
    model = load(ckpt)
    return request.param, folder, ckpt, model


def parts_of(model, name):
    if name.startswith("unet."):
        return model.unet.get_submodule(name[5:])
    _, index, path = name.split(".", 2)
    return model.text_encoders[int(index)].get_submodule(path)


def read_param(handle, model, param):
    """A model parameter as stored in a single file, undoing the converter's transforms (OpenCLIP q/k/v split
    from `in_proj_weight`, transposed `text_projection`, 1x1-conv reshapes)."""
    tensor = handle.get_tensor(model.key_map[param])
    transform = model.key_map_special.get("transforms", {}).get(param)
    if transform is None or transform["op"] == "reshape":
        return tensor
    if transform["op"] == "split":
        return tensor.chunk(int(transform["parts"]), dim=0)[int(transform["index"])]
    return tensor.t()


def relative_error(got, want):
    return ((got - want).norm() / want.norm().clamp_min(1e-12)).item()


def sample(model, reference, per_kind=6):
    """Up to `per_kind` evenly spaced layers of each (part, layer type): every kind of layer is checked while the
    LyCORIS reference (one instrumented forward per layer) stays affordable."""
    kinds: dict[tuple[str, str], list[str]] = {}
    for name in sorted(reference):
        kinds.setdefault((name.split(".")[0], type(parts_of(model, name)).__name__), []).append(name)
    chosen = []
    for names in kinds.values():
        step = max(1, len(names) // per_kind)
        chosen += names[::step][:per_kind]
    return chosen


def check(model, reference, multiplier, label):
    assert reference, label
    for name in sample(model, reference):
        expected_fn = reference[name]
        expected = expected_fn(multiplier)
        layer = parts_of(model, name)
        err = relative_error(layer.weight.detach(), expected.weight)
        assert err <= 1e-5, f"{label} {name}: weight relative error {err:.2e}"
        if expected.bias is not None:
            err = relative_error(layer.bias.detach(), expected.bias)
            assert err <= 1e-5, f"{label} {name}: bias relative error {err:.2e}"


@pytest.mark.parametrize("algo", ALGOS)
def test_webui_path_and_merge_tool_match_lycoris(setup, algo, tmp_path):
    family, folder, ckpt, model = setup
    pristine = state_snapshot(model)
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    reference = write_lycoris_file(lora_dir / f"{algo}.safetensors", algo, model.unet, model.text_encoders, seed=7)
    registry = NetworkRegistry([lora_dir], cache=None)
    registry.refresh()
    engine = LoraEngine(registry)
    options = Options(None)
    options.add("lora_add_hashes_to_infotext", True, "hashes")
    networks = ExtraNetworkRegistry()
    networks.register(extra_networks_lora.ExtraNetworkLora(engine, options, lambda: model), aliases=["lyco"])

    class P:
        sd_model = model
        comments: list = []
        extra_generation_params: dict = {}
        generation_state = GenerationState()

    for multiplier in MULTIPLIERS:
        p = P()
        p.comments, p.extra_generation_params = [], {}
        p.generation_state = GenerationState()
        networks.activate(p, parse_prompt(f"a photo <lora:{algo}:{multiplier}>")[1])
        assert p.comments == [], p.comments
        assert engine.last_report.stats.layers_touched == len(reference)
        check(model, reference, multiplier, f"{family} {algo} x{multiplier} (webui)")
    networks.activate(P(), {})
    assert_bitwise_equal(model, pristine)

    for multiplier in MULTIPLIERS:
        out = tmp_path / f"merged-{multiplier}.safetensors"
        merge(ckpt, [lora_dir], f"<lora:{algo}:{multiplier}>", out)
        with safe_open(str(out), "pt") as merged:  # read the layers back under the checkpoint's own keys
            for name in sample(model, reference):
                expected = reference[name](multiplier)
                for param, want in (("weight", expected.weight), ("bias", expected.bias)):
                    if want is not None:
                        got = read_param(merged, model, f"{name}.{param}").reshape(want.shape)
                        err = relative_error(got, want)
                        label = f"{family} {algo} x{multiplier} (merge tool) {name}.{param}"
                        assert err <= 1e-5, f"{label}: relative error {err:.2e}"
