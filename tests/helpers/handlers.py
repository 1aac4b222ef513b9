"""The Lora extra-network handler on a tiny model, and the parts of a processing object it uses."""

from __future__ import annotations

from lorakit.engine.engine import LoraEngine
from lorakit.library.registry import NetworkRegistry
from lorakit.prompt import extra_network as extra_networks_lora
from modules.cache import DiskCache
from modules.extra_networks import ExtraNetworkRegistry
from modules.generation_state import GenerationState
from modules.options import Options


class P:
    """The parts of a processing object the Lora handler uses."""

    def __init__(self, model, is_hr_pass=False):
        self.sd_model = model
        self.comments: list[str] = []
        self.extra_generation_params: dict = {}
        self.is_hr_pass = is_hr_pass
        self.generation_state = GenerationState()


def make_handler(tmp_path, model, lbw_presets=None):
    """(extra-network registry with the Lora handler, its engine) over `tmp_path / "Lora"`; `lbw_presets`: the
    `lora_lbw_presets` option's text, when given."""
    registry = NetworkRegistry([tmp_path / "Lora"], DiskCache(tmp_path / "cache.json"))
    registry.refresh()
    options = Options(None)
    options.add("lora_add_hashes_to_infotext", True, "hashes")
    if lbw_presets is not None:
        options.add("lora_lbw_presets", lbw_presets, "lbw presets")
    engine = LoraEngine(registry)
    handler = extra_networks_lora.ExtraNetworkLora(engine, options, lambda: model)
    networks = ExtraNetworkRegistry()
    networks.register(handler, aliases=["lyco"])
    return networks, engine
