"""A1111's `network` module for third-party extensions (`import network`): the types A1111 extensions read.

* `SdVersion`: the model families (`Unknown`, `SD1`, `SD2`, `SDXL`); a `str` enum, so `entry.sd_version ==
  network.SdVersion.SDXL` and `entry.sd_version == "SDXL"` both hold for an SDXL file.
* `NetworkOnDisk`: a LoRA file (`name`, `filename`, `metadata`, `sd_version`, `alias`, `hash`, `shorthash`,
  `is_safetensors`, `read_hash()`, `get_alias()`), the registry's own entry type.
* `Network`: a network in the active set (`name`, `mentioned_name`, `network_on_disk`, `te_multiplier`,
  `unet_multiplier`, `dyn_dim`, `mtime`, `modules`), as `networks.loaded_networks` lists them.
* `NetworkModule`: the base class of one layer's module (one subclass per algorithm in `lorakit.algorithms`).
"""

from __future__ import annotations

from lorakit.a1111 import LoadedNetwork as Network
from lorakit.algorithms.base import NetworkModule
from lorakit.formats.family import SdVersion
from lorakit.library.registry import NetworkOnDisk

__all__ = ["Network", "NetworkModule", "NetworkOnDisk", "SdVersion"]
