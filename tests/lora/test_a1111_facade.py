"""The A1111 facade: code written the way popular A1111 extensions use `networks`, `network`, `lora` and
`lyco_helpers` (lora-block-weight, Civitai helpers, sd-webui-additional-networks style) runs against the engine."""

from __future__ import annotations

import importlib

import pytest
import torch

from modules.host import WebUI
from tests.helpers.lora_testing import state_snapshot, tiny_loaded_model, write_kohya_lora


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory):
    """A WebUI with the Lora extension started (it binds the facade to its engine) and two LoRA files."""
    data = tmp_path_factory.mktemp("a1111-facade")
    webui = WebUI.create(["--data-dir", str(data), "--no-embedded-default"])
    model = tiny_loaded_model("SD1")
    write_kohya_lora(webui.paths.lora_dir / "style.safetensors", model, seed=1,
                     metadata={"ss_output_name": "style-alias", "ss_base_model_version": "sd_v1"})
    write_kohya_lora(webui.paths.lora_dir / "sub" / "detail.safetensors", model, seed=2)
    engine = webui.services["lora"]
    engine.registry.refresh()
    engine.set_model(model)
    from lorakit import a1111  # noqa: PLC0415 - imported where it is needed

    a1111.VIEW.bind(engine)  # the last WebUI created in this test session is the one the facade reads
    yield webui, engine, model


def test_civitai_helper_style_listing(started):
    """List networks and read `NetworkOnDisk` fields as the Civitai helpers do."""
    _, engine, _ = started
    networks = importlib.import_module("networks")
    network = importlib.import_module("network")
    networks.list_available_networks()
    available = networks.available_networks
    assert {"style", "detail", "sub/detail"} <= set(available)
    entry = available["style"]
    assert isinstance(entry, network.NetworkOnDisk)
    assert entry.name == "style" and entry.filename.endswith("style.safetensors") and entry.is_safetensors
    assert entry.alias == "style-alias" and entry.metadata["ss_output_name"] == "style-alias"
    assert entry.sd_version == network.SdVersion.SD1 and entry.sd_version == "SD1"
    assert networks.available_network_aliases["style-alias"] is entry
    full_hash = entry.read_hash()
    assert entry.hash == full_hash and len(full_hash) == 64 and entry.shorthash == full_hash[:12]
    assert networks.available_network_hash_lookup[entry.shorthash] is entry
    assert "none" in networks.forbidden_network_aliases


def test_lora_block_weight_style_load_and_read_multipliers(started):
    """`load_networks(names, te, unet, dyn)` applies exactly those networks; `loaded_networks` reports them with
    A1111's multiplier attributes, and an empty list makes the weights pristine again."""
    _, engine, model = started
    networks = importlib.import_module("networks")
    pristine = state_snapshot(model)
    networks.load_networks(["style", "detail"], [0.5, 1.0], [0.25, 1.0], [None, 2])
    loaded = networks.loaded_networks
    assert [n.name for n in loaded] == ["style", "detail"]
    assert [(n.te_multiplier, n.unet_multiplier, n.dyn_dim) for n in loaded] == [(0.5, 0.25, None), (1.0, 1.0, 2)]
    assert all(n.mentioned_name == n.name and n.network_on_disk.name == n.name and n.modules for n in loaded)
    assert loaded[0].network_on_disk is networks.available_networks["style"]
    changed = state_snapshot(model)
    assert any(not torch.equal(changed[k], pristine[k]) for k in pristine)
    networks.load_networks(["style"], [0.7])  # a missing unet multiplier is the te one, as in A1111
    assert [(n.te_multiplier, n.unet_multiplier) for n in networks.loaded_networks] == [(0.7, 0.7)]
    networks.load_networks([])
    assert networks.loaded_networks == []
    after = state_snapshot(model)
    assert all(torch.equal(after[k], pristine[k]) for k in pristine)


def test_old_lora_module_names_and_cache(started):
    """The pre-1.5 `lora` names and A1111's in-memory cache helpers."""
    _, engine, _ = started
    lora = importlib.import_module("lora")
    networks = importlib.import_module("networks")
    lora.load_networks(["style"], [1.0])
    assert [n.name for n in lora.loaded_loras] == ["style"]
    assert set(lora.available_loras) == set(networks.available_networks)
    loaded = networks.load_network("style", networks.available_networks["style"])
    assert loaded.modules and loaded.network_on_disk.name == "style"
    assert "style" in networks.networks_in_memory
    networks.purge_networks_from_memory()
    assert set(networks.networks_in_memory) == {"style"}  # the active one stays
    lora.load_networks([])
    networks.purge_networks_from_memory()
    assert networks.networks_in_memory == {}


def test_no_torch_patching_hooks_exist(started):
    """`originals` is None and the per-layer hooks A1111 patched in are refused with the reason."""
    networks = importlib.import_module("networks")
    assert networks.originals is None
    with pytest.raises(AttributeError, match="merges LoRAs eagerly"):
        _ = networks.network_apply_weights
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = networks.not_a_name


def test_lyco_helpers_rebuilds_match_the_plain_math():
    """A1111's `lyco_helpers` names compute what their formulas say."""
    lyco_helpers = importlib.import_module("lyco_helpers")
    generator = torch.Generator().manual_seed(0)
    up, down = torch.randn(6, 3, generator=generator), torch.randn(3, 5, generator=generator)
    assert torch.allclose(lyco_helpers.rebuild_conventional(up, down, (6, 5)), up @ down)
    assert torch.allclose(lyco_helpers.rebuild_conventional(up, down, (6, 5), dyn_dim=2), up[:, :2] @ down[:2])
    mid = torch.randn(3, 4, 3, 3, generator=generator)
    up4, down4 = torch.randn(6, 3, 1, 1, generator=generator), torch.randn(4, 5, 1, 1, generator=generator)
    rebuilt = lyco_helpers.rebuild_cp_decomposition(up4, down4, mid)
    expected = torch.einsum("abhw,oa,bc->ochw", mid, up4.flatten(1), down4.flatten(1))
    assert rebuilt.shape == (6, 5, 3, 3) and torch.allclose(rebuilt, expected, atol=1e-5)
    wa = torch.randn(3, 6, generator=generator)
    assert torch.allclose(lyco_helpers.make_weight_cp(mid, wa, down4.flatten(1)),
                          torch.einsum("abhw,ao,bc->ochw", mid, wa, down4.flatten(1)), atol=1e-5)
    assert lyco_helpers.factorization(12, -1) == (3, 4) and lyco_helpers.factorization(12, 2) == (2, 6)
