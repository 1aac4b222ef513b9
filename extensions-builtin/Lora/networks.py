"""A1111's `networks` module for third-party extensions (`import networks`), backed by the engine.

Names (A1111's meaning; see `lorakit.a1111` for the decisions): `available_networks`, `available_network_aliases`,
`available_network_hash_lookup`, `forbidden_network_aliases`, `loaded_networks`, `networks_in_memory`,
`list_available_networks()`, `load_networks(names, te_multipliers, unet_multipliers, dyn_dims)`,
`load_network(name, network_on_disk)`, `purge_networks_from_memory()`, `originals` (None: nothing is patched).
The engine itself is `lorakit.engine`.
"""

from __future__ import annotations

from lorakit.a1111 import VIEW, facade_getattr

originals = None  # A1111 kept the torch layers' original forward functions here; this engine patches none

list_available_networks = VIEW.list_available_networks
load_networks = VIEW.load_networks
load_network = VIEW.load_network
purge_networks_from_memory = VIEW.purge_networks_from_memory

_NAMES = {name: name for name in ("available_networks", "available_network_aliases", "available_network_hash_lookup",
                                  "forbidden_network_aliases", "loaded_networks", "networks_in_memory")}


def __getattr__(name: str) -> object:
    """A1111's module-level collections, read from the engine on each access."""
    return facade_getattr(__name__, name, _NAMES)
