"""The A1111 view of the engine: what A1111's `networks`, `network` and `lora` modules held as module globals.

Third-party A1111 extensions (lora-block-weight, Civitai helpers, sd-webui-additional-networks style code) import
the extension's top-level `networks`, `network`, `lora` and `lyco_helpers` and read or call A1111's names there. Those
four modules are thin facades over one `A1111View` (`VIEW`), bound to the WebUI's engine by the extension's start-up
script (`VIEW.bind(engine)`). Decisions:
* Collections (`available_networks`, `loaded_networks`, ...) are snapshots built on each access from the registry and
  the engine, with A1111's keys and element types: changing them changes nothing (A1111's were live globals, but
  writing into them was never a supported way to apply a LoRA; `load_networks` is).
* `loaded_networks` holds `LoadedNetwork` objects (`network.Network` in A1111's names): `name`, `mentioned_name`,
  `network_on_disk`, `te_multiplier`, `unet_multiplier`, `dyn_dim`, `mtime`, `modules` (layer name -> module).
* `load_networks(names, te_multipliers, unet_multipliers, dyn_dims)` makes the model hold exactly those networks,
  as A1111's does; the report says what failed (A1111 printed it).
* `originals` is None: this engine merges eagerly and never patches torch classes, so there are no original
  `forward`s to call and no per-layer hooks (`network_apply_weights`, `network_restore_weights_from_backup`,
  `network_reset_cached_weight`) to wrap; asking for one raises an AttributeError that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .algorithms.base import NetworkModule
from .engine.engine import ActivationReport, ActiveNetwork, LoraEngine, NetworkRequest
from .errors import LoraError
from .library.registry import NetworkOnDisk

NOT_PROVIDED = ("network_apply_weights", "network_restore_weights_from_backup", "network_reset_cached_weight",
                "network_forward", "network_Linear_forward", "network_Conv2d_forward", "network_GroupNorm_forward",
                "network_LayerNorm_forward", "network_MultiheadAttention_forward")


class ExtensionNotStartedError(LoraError):
    """An A1111 name was read before the Lora extension started (no engine is bound yet)."""


@dataclass
class LoadedNetwork:
    """One network in the active set, in A1111's `network.Network` attribute names."""

    name: str
    network_on_disk: NetworkOnDisk
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None
    mtime: float | None = None
    method: str = "native"
    modules: dict[str, NetworkModule] = field(default_factory=dict)

    @property
    def mentioned_name(self) -> str:
        """The name as the prompt wrote it (A1111 sets it on load)."""
        return self.name

    @classmethod
    def of(cls, active: ActiveNetwork) -> LoadedNetwork:
        """The A1111 view of one engine `ActiveNetwork`."""
        request, net = active.request, active.network
        return cls(name=request.name, network_on_disk=net.on_disk, te_multiplier=request.te_multiplier,
                   unet_multiplier=request.unet_multiplier, dyn_dim=request.dyn_dim, mtime=net.mtime,
                   method=active.method, modules=dict(net.modules))


class A1111View:
    """A1111's module-level names, read from the bound engine (see the module docstring)."""

    def __init__(self) -> None:
        self._engine: LoraEngine | None = None

    def bind(self, engine: LoraEngine) -> None:
        """Serve the names from `engine` (called once by the extension's start-up script)."""
        self._engine = engine

    @property
    def engine(self) -> LoraEngine:
        """The bound engine; ExtensionNotStartedError before the extension started."""
        if self._engine is None:
            raise ExtensionNotStartedError("the Lora extension has not started yet")
        return self._engine

    # ------------------------------------------------------------------ registry (A1111 `networks` globals)
    @property
    def available_networks(self) -> dict[str, NetworkOnDisk]:
        """Prompt name (stem, and `sub/stem`) -> file."""
        return dict(self.engine.registry.available)

    @property
    def available_network_aliases(self) -> dict[str, NetworkOnDisk]:
        """Stem and unambiguous alias -> file."""
        return dict(self.engine.registry.aliases)

    @property
    def available_network_hash_lookup(self) -> dict[str, NetworkOnDisk]:
        """12-character short hash -> file (files hashed so far)."""
        return dict(self.engine.registry.hash_lookup)

    @property
    def forbidden_network_aliases(self) -> dict[str, int]:
        """Lower-cased ambiguous aliases (A1111 kept them as dict keys with value 1)."""
        return dict.fromkeys(self.engine.registry.forbidden_aliases, 1)

    def list_available_networks(self) -> None:
        """Rescan the Lora folders."""
        self.engine.registry.refresh()

    # ------------------------------------------------------------------ the active set
    @property
    def loaded_networks(self) -> list[LoadedNetwork]:
        """The networks the model holds now, in prompt order, with their multipliers."""
        return [LoadedNetwork.of(active) for active in self.engine.snapshot().active]

    @property
    def networks_in_memory(self) -> dict[str, LoadedNetwork]:
        """Name -> loaded network for every network the engine keeps in memory (A1111's cache)."""
        return {net.name: LoadedNetwork(name=net.name, network_on_disk=net.on_disk, mtime=net.mtime,
                                        modules=dict(net.modules))
                for net in self.engine.snapshot().in_memory}

    def load_networks(self, names: list[str], te_multipliers: list[float] | None = None,
                      unet_multipliers: list[float] | None = None,
                      dyn_dims: list[int | None] | None = None) -> ActivationReport:
        """A1111's signature: make the model hold exactly these networks with these multipliers (missing
        multipliers are 1; a missing unet multiplier is the te one, as in A1111)."""
        count = len(names)
        te = list(te_multipliers or []) + [1.0] * (count - len(te_multipliers or []))
        unet = list(unet_multipliers) if unet_multipliers else list(te)
        unet += te[len(unet):count]
        dyn = list(dyn_dims or []) + [None] * (count - len(dyn_dims or []))
        requests = [NetworkRequest(name=n, te_multiplier=float(t), unet_multiplier=float(u), dyn_dim=d)
                    for n, t, u, d in zip(names, te, unet, dyn)]
        return self.engine.activate(requests)

    def load_network(self, name: str, network_on_disk: NetworkOnDisk) -> LoadedNetwork:
        """One file loaded against the current model (from the engine's cache), under the prompt name `name`."""
        net = self.engine.network(network_on_disk)
        return LoadedNetwork(name=name, network_on_disk=network_on_disk, mtime=net.mtime, modules=dict(net.modules))

    def purge_networks_from_memory(self) -> None:
        """Drop every cached network that is not in the active set."""
        self.engine.purge_memory()


VIEW = A1111View()


def facade_getattr(module: str, name: str, names: dict[str, str]) -> object:
    """Module-level `__getattr__` of a facade module: `names` maps the module's A1111 names to `VIEW` attributes."""
    if name in names:
        return getattr(VIEW, names[name])
    if name in NOT_PROVIDED:
        raise AttributeError(f"{module}.{name} is not provided: this engine merges LoRAs eagerly into the weights and "
                             "never patches torch layers, so there is no per-layer hook to call or wrap")
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
