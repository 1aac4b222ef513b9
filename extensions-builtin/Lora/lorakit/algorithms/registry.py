"""Registry of network strategies: the ordered module types and :func:`create_module`.

Types are tried in order and the first that claims a group wins (A1111's order, with BOFT after OFT; OFT
claims 3-D ``oft_blocks`` and ``oft_diag``, BOFT 4-D ``oft_blocks``). The loader never grows an if-chain:
a new strategy is one module plus one entry here.
"""

from __future__ import annotations

import torch

from ..errors import FormatError
from .base import NetworkModule
from .boft import ModuleTypeBoft
from .full import ModuleTypeFull
from .glora import ModuleTypeGLora
from .hada import ModuleTypeHada
from .ia3 import ModuleTypeIa3
from .lokr import ModuleTypeLokr
from .lora import ModuleTypeLora
from .norm import ModuleTypeNorm
from .oft import ModuleTypeOft

MODULE_TYPES: list[type[NetworkModule]] = [
    ModuleTypeLora,
    ModuleTypeHada,
    ModuleTypeIa3,
    ModuleTypeLokr,
    ModuleTypeFull,
    ModuleTypeNorm,
    ModuleTypeGLora,
    ModuleTypeOft,
    ModuleTypeBoft,
]


class UnsupportedKeysError(FormatError):
    """No strategy recognises a group of parts."""


def create_module(key: str, weights: dict[str, torch.Tensor]) -> NetworkModule:
    """The first module type in :data:`MODULE_TYPES` that claims ``weights`` (parts of network key ``key``).

    Raises UnsupportedKeysError naming the key and its parts when none does, and ValueError (from the type)
    when the parts are recognised but malformed (shape mismatch, NaN/Inf).
    """
    for module_type in MODULE_TYPES:
        module = module_type.from_weights(key, weights)
        if module is not None:
            return module
    names = ", ".join(f"{part} {tuple(t.shape)}" for part, t in sorted(weights.items()))
    raise UnsupportedKeysError(
        f"{key}: no network type ({', '.join(t.algorithm for t in MODULE_TYPES)}) accepts parts: {names}"
    )
