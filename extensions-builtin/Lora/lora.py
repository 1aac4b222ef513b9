"""A1111's older `lora` module names for third-party extensions (`import lora`), backed by the engine.

`available_loras`, `available_lora_aliases`, `available_lora_hash_lookup`, `forbidden_lora_aliases`, `loaded_loras`
are A1111's pre-1.5 spellings of the `networks` collections; `list_available_loras()` and `load_networks(...)` as in
`networks`. See `lorakit.a1111` for what each means here.
"""

from __future__ import annotations

from lorakit.a1111 import VIEW, facade_getattr

list_available_loras = VIEW.list_available_networks
load_networks = VIEW.load_networks

_NAMES = {
    "available_loras": "available_networks", "available_lora_aliases": "available_network_aliases",
    "available_lora_hash_lookup": "available_network_hash_lookup", "forbidden_lora_aliases": "forbidden_network_aliases",
    "loaded_loras": "loaded_networks", "available_networks": "available_networks",
    "available_network_aliases": "available_network_aliases", "loaded_networks": "loaded_networks",
}


def __getattr__(name: str) -> object:
    """The collections, read from the engine on each access."""
    return facade_getattr(__name__, name, _NAMES)
