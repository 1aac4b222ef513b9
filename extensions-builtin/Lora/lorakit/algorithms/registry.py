"""Registry of network strategies: the ordered module types, :func:`create_module`, and the one recogniser.

:func:`recognise` names the strategy of a group of parts from their shapes alone (the types' own ``claims`` on
shape-only meta tensors), so the loader (:func:`create_module`) and the card badge (:func:`detect_algorithm`, from the
safetensors header without reading a tensor) cannot disagree about what a file holds.

Types are tried in order and the first that claims a group wins (A1111's order, with BOFT after OFT; OFT
claims 3-D ``oft_blocks`` and ``oft_diag``, BOFT 4-D ``oft_blocks``). The loader never grows an if-chain:
a new strategy is one module plus one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import FormatError
from ..formats.keys import split_key
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
from .set_weight import ModuleTypeSetWeight

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
    ModuleTypeSetWeight,
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


def recognise(parts: Mapping[str, Sequence[int]]) -> type[NetworkModule] | None:
    """The module type that claims a group whose parts have these shapes (header only), or None."""
    shaped = {name: torch.empty(tuple(shape), device="meta") for name, shape in parts.items()}
    return next((module_type for module_type in MODULE_TYPES if module_type.claims(shaped)), None)


def group_label(parts: Mapping[str, Sequence[int]]) -> str | None:
    """The badge of one group: its strategy's algorithm, "LoCon" for a LoRA with a k x k kernel or a Tucker
    `lora_mid`, or None when no strategy claims it."""
    module_type = recognise(parts)
    if module_type is None:
        return None
    label = module_type.algorithm
    if label == "LoRA":
        down = parts.get("lora_down.weight") or parts.get("lora_A.weight") or ()
        if "lora_mid.weight" in parts or (len(down) == 4 and max(down[2:]) > 1):
            label = "LoCon"
    return label


def detect_algorithm(shapes: Mapping[str, Sequence[int]], metadata: Mapping[str, object] | None = None) -> str:
    """The badge for a card from the file's tensor names and shapes: the algorithm of most of its layer groups
    ("LoRA", "LoCon", "LoHa", "LoKr", "IA3", "GLoRA", "OFT", "BOFT", "Full", "Norm", "Set"), "+DoRA" when a group has a
    DoRA magnitude, "Unknown" when no group is claimed."""
    groups: dict[str, dict[str, Sequence[int]]] = {}
    for key, shape in shapes.items():
        if key.startswith("bundle_emb."):
            continue
        layer, part = split_key(key)
        groups.setdefault(layer, {})[part] = shape
    counts: dict[str, int] = {}
    for parts in groups.values():
        label = group_label(parts)
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return "Unknown"
    name = max(counts, key=lambda n: counts[n])
    if any("dora_scale" in parts for parts in groups.values()):
        name += "+DoRA"
    return name
