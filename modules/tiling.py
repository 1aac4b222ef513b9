"""Seamless tiling (A1111's `tiling`): circular padding on every 2-D convolution of the UNet and the VAE.

`circular_padding(model, enabled)` switches each `Conv2d` instance's `padding_mode` to "circular" for the duration
of a generation and puts the previous modes back afterwards (per instance; the torch class is untouched). A
convolution pads its input by wrapping around the opposite edge, so the image continues across its borders and
tiles without seams.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def circular_padding(model: Any, enabled: bool = True) -> Iterator[int]:
    """Circular padding on `model.unet` and `model.vae` convolutions while the block runs; yields how many
    convolutions were switched (0 when not `enabled`)."""
    if not enabled:
        yield 0
        return
    switched: list[tuple[torch.nn.Conv2d, str]] = []
    try:
        for part in (model.unet, model.vae):
            for module in part.modules():
                if isinstance(module, torch.nn.Conv2d) and module.padding_mode != "circular":
                    switched.append((module, module.padding_mode))
                    module.padding_mode = "circular"
        yield len(switched)
    finally:
        for module, mode in switched:
            module.padding_mode = mode
