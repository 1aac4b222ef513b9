"""BFL's Flux control LoRAs (flux1-canny/depth-dev-lora): BFL's dotted names with PEFT parts, biases on the up
factors, trained RMSNorm scales stored whole, and an `img_in` with twice the model's input channels.

The reference is the BFL checkpoint itself: the test merges the file's tensors into the BFL weights by the
definitions (W + m·B·A, b + m·b_B, a norm scale blended W + m·(scale − W), `img_in` on its first columns: the
control channels fed zeros), writes that as a BFL file and loads it through the host's loader; the engine applied to
the pristine file must give the same weights. Removal is bitwise; the user is told what of the file has no effect.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.formats.sd_version import detect_sd_version
from lorakit.library.registry import NetworkRegistry
from modules import flux_model
from modules.safetensors_header import write_safetensors
from modules.sd_model_types import CheckpointInfo
from modules.sd_models import load_checkpoint
from tests.helpers import flux_factory
from tests.helpers.lora_testing import assert_bitwise_equal, state_snapshot

RANK = 4


def load(path, models_dir):
    return load_checkpoint(CheckpointInfo(path=path, name=path.name, format="single-file"), "cpu", torch.float32,
                           models_dir)


def control_lora(bfl: dict[str, torch.Tensor], seed: int = 3) -> dict[str, torch.Tensor]:
    """A control LoRA over every BFL Linear (img_in with twice its input columns) and every q/k norm."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, weight in bfl.items():
        module, _, leaf = key.rpartition(".")
        if leaf == "weight" and weight.dim() == 2:
            columns = weight.shape[1] * (2 if module == "img_in" else 1)
            tensors[f"{module}.lora_A.weight"] = torch.randn(RANK, columns, generator=generator) * 0.1
            tensors[f"{module}.lora_B.weight"] = torch.randn(weight.shape[0], RANK, generator=generator) * 0.1
            tensors[f"{module}.lora_B.bias"] = torch.randn(weight.shape[0], generator=generator) * 0.1
        elif leaf == "scale":
            tensors[key] = weight + torch.randn(weight.shape, generator=generator) * 0.3
    return tensors


def merged_by_definition(bfl: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], m: float) -> dict:
    merged = dict(bfl)
    for key, value in lora.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            delta = lora[f"{module}.lora_B.weight"] @ value  # alpha absent: scale 1
            width = bfl[f"{module}.weight"].shape[1]
            merged[f"{module}.weight"] = bfl[f"{module}.weight"] + m * delta[:, :width]
            merged[f"{module}.bias"] = bfl[f"{module}.bias"] + m * lora[f"{module}.lora_B.bias"]
        elif key.endswith(".scale"):
            merged[key] = bfl[key] + m * (value - bfl[key])
    return merged


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    flux_factory.write_companions(root, seed=4)
    bfl = {k: v.contiguous() for k, v in flux_factory.bfl_state_dict(flux_factory.build_tiny_flux(4)).items()}
    ckpt = write_safetensors(root / "flux.safetensors", bfl, {"format": "pt"})
    lora = control_lora(bfl)
    (root / "Lora").mkdir()
    save_file(lora, str(root / "Lora" / "canny-control.safetensors"))
    return root, ckpt, bfl, lora


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_control_lora_gives_the_weights_of_its_definition(files, strength):
    root, ckpt, bfl, lora = files
    reference = write_safetensors(root / f"want-{strength}.safetensors", merged_by_definition(bfl, lora, strength),
                                  {"format": "pt"})
    want = state_snapshot(load(reference, root))
    model = load(ckpt, root)
    pristine = state_snapshot(model)
    registry = NetworkRegistry([root / "Lora"], cache=None, hashing=False)
    registry.refresh()
    assert registry.find("canny-control").effective_sd_version == "Flux"
    engine = LoraEngine(registry)
    engine.set_model(model)
    report = engine.activate([NetworkRequest("canny-control", strength, strength)])
    assert not report.errors and not report.not_found
    got = state_snapshot(model)
    unet = [k for k in want if k.startswith("unet.")]
    worst = max((got[k] - want[k]).abs().max().item() for k in unet)
    assert worst < 1e-6, worst
    changed = {k for k in unet if not torch.equal(got[k], pristine[k])}
    assert changed == {k for k in unet if not torch.equal(want[k], pristine[k])}
    assert any(k.endswith("norm_q.weight") for k in changed) and "unet.x_embedder.bias" in changed
    assert any("layers applied in part" in w and "img_in" in w and "control-image channels get no input" in w
               for w in report.warnings), report.warnings
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)


def test_control_lora_keys_are_flux_and_grouped_per_bfl_module(files):
    _, _, _, lora = files
    assert detect_sd_version({}, {k: list(v.shape) for k, v in lora.items()}) == "Flux"
    from lorakit.algorithms.registry import detect_algorithm  # noqa: PLC0415

    assert detect_algorithm({k: list(v.shape) for k, v in lora.items()}) == "LoRA"
    norms = [k for k in lora if k.endswith("_norm.scale")]
    assert len(norms) == 2 * 4 + 2 * 2  # img/txt query/key per double block, query/key per single block
    assert flux_model.BFL_MARKER.replace(".weight", ".lora_A.weight") in lora


def test_peft_lora_bias_matches_peft_merge(tmp_path):
    """PEFT's `lora_bias=True` (a bias on lora_B, the layout control LoRAs use): weights and biases equal what PEFT's
    own merge writes into the layers."""
    import copy  # noqa: PLC0415

    from diffusers.loaders.lora_pipeline import FluxLoraLoaderMixin  # noqa: PLC0415
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model  # noqa: PLC0415
    from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: PLC0415

    model = flux_factory.tiny_flux_model(seed=2)
    torch.manual_seed(8)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "proj_mlp", "x_embedder", "norm_out.linear"],
                        init_lora_weights=False, lora_bias=True)
    injected = inject_adapter_in_model(config, copy.deepcopy(model.unet))
    for module in injected.modules():
        if isinstance(module, BaseTunerLayer):
            torch.nn.init.normal_(module.lora_B["default"].bias, std=0.1)
    import warnings  # noqa: PLC0415

    from peft.utils.warning import PeftWarning  # noqa: PLC0415

    with warnings.catch_warnings():  # PEFT's sharding check takes its own 1-D lora_B biases for unfinished shards
        warnings.simplefilter("ignore", PeftWarning)
        state = get_peft_model_state_dict(injected)
    assert any(k.endswith("lora_B.bias") for k in state)
    FluxLoraLoaderMixin.save_lora_weights(str(tmp_path), transformer_lora_layers=state, weight_name="bias.safetensors",
                                          transformer_lora_adapter_metadata=config.to_dict())
    pristine = state_snapshot(model)
    registry = NetworkRegistry([tmp_path], cache=None, hashing=False)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    report = engine.activate([NetworkRequest("bias", 1.0, 1.0)])
    assert not report.errors, report.errors
    got = state_snapshot(model)
    checked = 0
    for path, module in injected.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            base = module.get_base_layer()
            for leaf in ("weight", "bias"):
                want = getattr(base, leaf).detach()
                key = f"unet.{path}.{leaf}"
                assert not torch.equal(want, pristine[key]), key
                assert (got[key] - want).abs().max().item() < 1e-5, key
                checked += 1
    assert checked == 2 * (4 + 2 + 2)  # to_q in 4 blocks, proj_mlp in 2, x_embedder, norm_out: weight + bias
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)
