"""PEFT/diffusers-format LoRAs written with the PEFT library (`lora_A`/`lora_B` keys under `unet.` and
`text_encoder.`, rank and alpha in `lora_adapter_metadata`, DoRA's `lora_magnitude_vector`) apply exactly the deltas
PEFT itself computes, at multipliers 1.0 and 0.7."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors.torch import save_file

from lorakit.engine.engine import LoraEngine, NetworkRequest
from lorakit.library.registry import NetworkRegistry
from tests.helpers.lora_testing import assert_bitwise_equal, state_snapshot, tiny_loaded_model

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


def peft_lora(module, targets, dora, seed):
    """A PEFT LoRA on a copy of `module`: (state dict of the adapter, {module path: PEFT's own delta})."""
    torch.manual_seed(seed)
    copy_ = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=targets, use_dora=dora,
                                               init_lora_weights=False), copy.deepcopy(module))
    deltas = {}
    with torch.no_grad():
        for name, layer in copy_.named_modules():
            if hasattr(layer, "get_delta_weight") and "default" in getattr(layer, "lora_A", {}):
                if dora:  # PEFT's merged DoRA weight, minus the base weight
                    base = layer.get_base_layer().weight.detach().clone()
                    layer.merge(adapter_names=["default"])
                    deltas[name] = layer.get_base_layer().weight.detach() - base
                    layer.unmerge()
                else:
                    deltas[name] = layer.get_delta_weight("default").detach().clone()
    return get_peft_model_state_dict(copy_), deltas


@pytest.mark.parametrize("family,dora", [("SD1", False), ("SDXL", False), ("SD1", True)])
def test_peft_library_files_apply_peft_deltas(tmp_path, family, dora):
    model = tiny_loaded_model(family)
    pristine = state_snapshot(model)
    unet_state, unet_deltas = peft_lora(model.unet, UNET_TARGETS, dora, seed=1)
    te_state, te_deltas = peft_lora(model.text_encoders[0], TE_TARGETS, dora, seed=2)
    tensors = {f"unet.{k}": v for k, v in unet_state.items()}
    tensors |= {f"text_encoder.{k}": v for k, v in te_state.items()}
    (tmp_path / "Lora").mkdir()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "Lora" / "peft.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"r": 4, "lora_alpha": 8, "use_dora": dora})})
    registry = NetworkRegistry([tmp_path / "Lora"], None)
    registry.refresh()
    engine = LoraEngine(registry)
    engine.set_model(model)
    expected = {f"unet.{k}": v for k, v in unet_deltas.items()} | {f"text_encoders.0.{k}": v for k, v in te_deltas.items()}
    assert len(expected) > 20
    multipliers = (1.0,) if dora else (1.0, 0.7)  # DoRA is not linear in the multiplier
    for multiplier in multipliers:
        report = engine.activate([NetworkRequest("peft", multiplier, multiplier)])
        assert not report.errors and not report.warnings, (report.errors, report.warnings)
        assert report.stats.layers_touched == len(expected)
        for name, delta in expected.items():
            part, path = ("unet", name[5:]) if name.startswith("unet.") else ("text_encoders.0", name.split(".", 2)[2])
            weight = model.torch_modules()[part].get_submodule(path).weight
            want = pristine[f"{part}.{path}.weight"] + multiplier * delta
            err = ((weight - want).norm() / want.norm()).item()
            assert err < 1e-5, f"{name} x{multiplier}: relative error {err:.2e}"
    engine.deactivate_all()
    assert_bitwise_equal(model, pristine)
