"""Per-block LoRA weights: SD.Next's `in=`/`mid=`/`out=` and lora-block-weight's `lbw=` vectors and presets.

Blocks of a layer come from `formats.blocks.block_of` (the one taxonomy): `BASE` is every text-encoder layer;
`IN00`..`IN11` (SDXL `IN08`), `M00`, `OUT00`..`OUT11` the UNet blocks; other UNet layers belong to no block: weight 1.

`lbw=` vectors (lora-block-weight's slot orders):
* SD1/SD2, 26 values: BASE, IN00-IN11, M00, OUT00-OUT11
* SD1/SD2, 17 values: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03-OUT11
* SDXL, 20 values: BASE, IN00-IN08, M00, OUT00-OUT08
* SDXL, 12 values: BASE, IN04, IN05, IN07, IN08, M00, OUT00-OUT05
Blocks a short vector does not list keep weight 1 (they hold no attention layer in that architecture; only
LoCon-style LoRAs have layers there). A vector of another length, or with a NaN/Inf value, is refused with a message
naming the lengths or the value.

`in=`/`mid=`/`out=` (SD.Next): scale the UNet's down, middle and up blocks (diffusers `down_blocks`, `mid_block`,
`up_blocks`); they combine with `lbw=` by multiplication.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..errors import LoraError
from ..formats.blocks import block_of
from ..formats.family import SdVersion, layout_of
from ..formats.keys import TargetLayer

SLOTS: dict[tuple[str, int], list[str]] = {
    (SdVersion.SD1, 26): ["BASE", *[f"IN{i:02d}" for i in range(12)], "M00", *[f"OUT{i:02d}" for i in range(12)]],
    (SdVersion.SD1, 17): ["BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00",
                          *[f"OUT{i:02d}" for i in range(3, 12)]],
    (SdVersion.SDXL, 20): ["BASE", *[f"IN{i:02d}" for i in range(9)], "M00", *[f"OUT{i:02d}" for i in range(9)]],
    (SdVersion.SDXL, 12): ["BASE", "IN04", "IN05", "IN07", "IN08", "M00", *[f"OUT{i:02d}" for i in range(6)]],
}

# lora-block-weight's default presets (17 values, SD1 layout); the first five are layout-free and also expand to
# SDXL's 12-value layout.
PRESETS_SD1: dict[str, list[float]] = {
    "NONE": [0.0] * 17,
    "ALL": [1.0] * 17,
    "ALL0.5": [0.5] * 17,
    "INALL": [1.0] * 7 + [0.0] * 10,
    "OUTALL": [1.0] + [0.0] * 7 + [1.0] * 9,
    "INS": [1.0, 1.0, 1.0, 1.0] + [0.0] * 13,
    "IND": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0] + [0.0] * 10,
    "MIDD": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0] + [0.0] * 5,
    "OUTD": [1.0] + [0.0] * 7 + [1.0] * 4 + [0.0] * 5,
    "OUTS": [1.0] + [0.0] * 12 + [1.0] * 4,
}
PRESETS_SDXL: dict[str, list[float]] = {
    "NONE": [0.0] * 12,
    "ALL": [1.0] * 12,
    "ALL0.5": [0.5] * 12,
    "INALL": [1.0] * 5 + [0.0] * 7,
    "OUTALL": [1.0] + [0.0] * 5 + [1.0] * 6,
}


class BlockWeightError(LoraError):
    """A block-weight argument that does not fit the loaded model; the message says why."""


def layout_family(family: str) -> str:
    """SD2 shares SD1's UNet block layout (`formats.family.layout_of`)."""
    return layout_of(family)


def parse_presets(text: str) -> dict[str, list[float]]:
    """User presets, one `NAME:v1,v2,...` per line (lora-block-weight's lbwpresets.txt format); other lines ignored."""
    presets: dict[str, list[float]] = {}
    for line in text.splitlines():
        name, sep, values = line.partition(":")
        if not sep or not name.strip():
            continue
        try:
            presets[name.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            continue
    return presets


def lbw_values(spec: str, family: str, user_presets: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Block -> weight for an `lbw=` value (a preset name or comma-separated numbers) on a `family` model."""
    layout = layout_family(family)
    presets = {**(PRESETS_SDXL if layout == SdVersion.SDXL else PRESETS_SD1), **(user_presets or {})}
    text = spec.strip()
    if text in presets:
        values = presets[text]
    elif re.fullmatch(r"[A-Za-z_][\w.]*", text):
        known = ", ".join(sorted(presets))
        raise BlockWeightError(f"unknown lbw preset {text!r} for {family} (known: {known})")
    else:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise BlockWeightError(f"lbw value {text!r} is neither a preset nor comma-separated numbers") from None
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise BlockWeightError(f"lbw value {bad!r} in {text!r} is not a finite number")
    lengths = sorted(n for fam, n in SLOTS if fam == layout)
    slots = SLOTS.get((layout, len(values)))
    if slots is None:
        raise BlockWeightError(
            f"lbw has {len(values)} values; a {family} model takes {' or '.join(map(str, lengths))}"
        )
    return dict(zip(slots, values))


def layer_factor(family: str, lbw: str | None = None, in_w: float | None = None, mid_w: float | None = None,
                 out_w: float | None = None, user_presets: dict[str, list[float]] | None = None,
                 ) -> Callable[[TargetLayer], float] | None:
    """A function giving each layer's block factor, or None when no block weight is set. Raises BlockWeightError."""
    if family == SdVersion.Flux and not (lbw is None and in_w is None and mid_w is None and out_w is None):
        raise BlockWeightError("block weights (lbw=, in=, mid=, out=) are not available for Flux models yet")
    blocks = lbw_values(lbw, family, user_presets) if lbw is not None else None
    if blocks is None and in_w is None and mid_w is None and out_w is None:
        return None
    parts = (("unet.down_blocks.", in_w), ("unet.mid_block.", mid_w), ("unet.up_blocks.", out_w))

    def factor(target: TargetLayer) -> float:
        value = 1.0
        if blocks is not None:
            value *= blocks.get(block_of(target) or "", 1.0)
        for prefix, weight in parts:
            if weight is not None and target.name.startswith(prefix):
                value *= weight
        return value

    return factor
