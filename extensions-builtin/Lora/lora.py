"""Legacy names that third-party A1111 extensions import from the Lora extension (`import lora`, `import networks`).

A1111 kept module-level dicts and lists; here they are views of the one engine the WebUI created, bound with
`bind(engine)` by the extension's start-up script. They are read-only snapshots refreshed on every access.
"""

from __future__ import annotations

from typing import Any

from networks import LoraEngine, NetworkRequest


class _LegacyView:
    """Attribute access in the old names, backed by the engine."""

    def __init__(self) -> None:
        self.engine: LoraEngine | None = None

    def bind(self, engine: LoraEngine) -> None:
        self.engine = engine

    def _require(self) -> LoraEngine:
        if self.engine is None:
            raise RuntimeError("the Lora extension has not started yet")
        return self.engine

    @property
    def available_loras(self) -> dict[str, Any]:
        return dict(self._require().registry.available)

    @property
    def available_lora_aliases(self) -> dict[str, Any]:
        return dict(self._require().registry.aliases)

    @property
    def available_lora_hash_lookup(self) -> dict[str, Any]:
        return dict(self._require().registry.hash_lookup)

    @property
    def forbidden_lora_aliases(self) -> dict[str, int]:
        return dict.fromkeys(self._require().registry.forbidden_aliases, 1)

    @property
    def loaded_loras(self) -> list[Any]:
        return [active.network for active in self._require().active]

    def list_available_loras(self) -> None:
        self._require().registry.refresh()

    def load_networks(self, names: list[str], te_multipliers: list[float] | None = None,
                      unet_multipliers: list[float] | None = None, dyn_dims: list[int | None] | None = None) -> Any:
        """A1111's signature: apply exactly these networks with these multipliers."""
        te = te_multipliers or [1.0] * len(names)
        unet = unet_multipliers or te
        dyn = dyn_dims or [None] * len(names)
        requests = [NetworkRequest(name=n, te_multiplier=t, unet_multiplier=u, dyn_dim=d)
                    for n, t, u, d in zip(names, te, unet, dyn)]
        return self._require().activate(requests)


legacy = _LegacyView()


def __getattr__(name: str) -> Any:
    """Module-level access (`lora.available_loras`) goes to the bound engine."""
    if name in ("available_loras", "available_lora_aliases", "available_lora_hash_lookup", "forbidden_lora_aliases",
                "loaded_loras", "list_available_loras", "load_networks"):
        return getattr(legacy, name)
    if name in ("available_networks", "available_network_aliases", "loaded_networks"):
        return getattr(legacy, {"available_networks": "available_loras", "available_network_aliases":
                                "available_lora_aliases", "loaded_networks": "loaded_loras"}[name])
    raise AttributeError(name)
