"""Per-block LoRA weights: SD.Next's `in=`/`mid=`/`out=` and lora-block-weight's `lbw=` vectors and presets.

Blocks of a layer come from `formats.blocks.BlockLayout.block_of` (the one taxonomy, shared with the "Where it acts"
chart): `BASE` is every text-encoder layer; `IN00`..`IN11` (SDXL `IN08`), `M00`, `OUT00`..`OUT11` the UNet blocks;
other UNet layers belong to no block: weight 1. Flux: `CLIP`, `T5`, `IN` (embedders), `DOUBLEnn`, `SINGLEnn`, `OUT`
(final layer).

`lbw=` vectors (lora-block-weight's slot orders):
* SD1/SD2, 26 values: BASE, IN00-IN11, M00, OUT00-OUT11
* SD1/SD2, 17 values: BASE, IN01, IN02, IN04, IN05, IN07, IN08, M00, OUT03-OUT11
* SDXL, 20 values: BASE, IN00-IN08, M00, OUT00-OUT08
* SDXL, 12 values: BASE, IN04, IN05, IN07, IN08, M00, OUT00-OUT05
* Flux, 2 + 1 + double + single + 1 values: CLIP, T5, IN, DOUBLE00.., SINGLE00.., OUT (lora-block-weight's CLIP, T5,
  IN, D00-D18, S00-S37, OUT: 61 values for Flux.1's 19 double and 38 single blocks). The counts come from the loaded
  transformer's config (`num_layers`, `num_single_layers`), so a tiny test model takes its own length.
Blocks a short vector does not list keep weight 1 (they hold no attention layer in that architecture; only
LoCon-style LoRAs have layers there). A vector of another length, or with a NaN/Inf value, is refused with a message
naming the lengths or the value.

Presets: lora-block-weight's defaults (17 values on SD1/SD2; the layout-free NONE, ALL, ALL0.5, INALL, OUTALL at
SDXL's 12); on Flux its `FLUXALL` (all ones) and the layout-free NONE, ALL, ALL0.5 at the model's Flux length. User
presets (`lbwpresets.txt` lines) work where their length fits the model.

`in=`/`mid=`/`out=` (SD.Next): scale the UNet's down, middle and up blocks (diffusers `down_blocks`, `mid_block`,
`up_blocks`); they combine with `lbw=` by multiplication. On Flux (our decision): `in=` scales the double blocks and
`out=` the single blocks, the two halves the image passes through in that order, as a UNet's down and up halves;
`mid=` has no Flux block and is ignored with a notice (`notices`). SD.Next itself has no Flux mapping: its
multiplier picks `in=` for any key that names none of `down_blocks`/`mid_block`/`up_blocks`, so there `in=` scales
the whole transformer and `out=`/`mid=` do nothing, which we found no reason to copy.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from ..errors import LoraError
from ..formats.blocks import CLIP, FLUX_IN, FLUX_KINDS, FLUX_OUT, T5, BlockLayout
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


def slot_layouts(blocks: BlockLayout) -> dict[int, list[str]]:
    """Vector length -> the block of each slot, for a model of layout `blocks` (Flux: one length, from its counts)."""
    if blocks.is_flux:
        slots = blocks.flux_blocks()
        return {len(slots): slots}
    layout = layout_of(blocks.family)
    return {length: slots for (family, length), slots in sorted(SLOTS.items()) if family == layout}


def presets(blocks: BlockLayout) -> dict[str, list[float]]:
    """The built-in presets for a model of layout `blocks` (see the module docstring)."""
    if blocks.is_flux:
        length = len(blocks.flux_blocks())
        return {"NONE": [0.0] * length, "ALL": [1.0] * length, "ALL0.5": [0.5] * length, "FLUXALL": [1.0] * length}
    return dict(PRESETS_SDXL if layout_of(blocks.family) == SdVersion.SDXL else PRESETS_SD1)


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


def _lengths_text(blocks: BlockLayout, layouts: dict[int, list[str]]) -> str:
    """The lengths a model takes, for the error message; Flux's with its slots, each run of blocks as a range:
    `8 (CLIP, T5, IN, DOUBLE00-DOUBLE01, SINGLE00-SINGLE01, OUT)`."""
    lengths = " or ".join(map(str, layouts))
    if not blocks.is_flux:
        return lengths
    names = [CLIP, T5, FLUX_IN]
    for kind in FLUX_KINDS.values():
        run = [slot for slot in blocks.flux_blocks() if slot.startswith(kind)]
        if run:
            names.append(run[0] if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return f"{lengths} ({', '.join([*names, FLUX_OUT])})"


def lbw_values(spec: str, blocks: BlockLayout, user_presets: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Block -> weight for an `lbw=` value (a preset name or comma-separated numbers) on a model of layout `blocks`."""
    family = blocks.family
    known_presets = {**presets(blocks), **(user_presets or {})}
    text = spec.strip()
    if text in known_presets:
        values = known_presets[text]
    elif re.fullmatch(r"[A-Za-z_][\w.]*", text):
        known = ", ".join(sorted(known_presets))
        raise BlockWeightError(f"unknown lbw preset {text!r} for {family} (known: {known})")
    else:
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise BlockWeightError(f"lbw value {text!r} is neither a preset nor comma-separated numbers") from None
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise BlockWeightError(f"lbw value {bad!r} in {text!r} is not a finite number")
    layouts = slot_layouts(blocks)
    slots = layouts.get(len(values))
    if slots is None:
        raise BlockWeightError(f"lbw has {len(values)} values; a {family} model takes {_lengths_text(blocks, layouts)}")
    return dict(zip(slots, values))


def notices(blocks: BlockLayout, mid_w: float | None = None) -> list[str]:
    """What the user should be told about block weights that are accepted but do nothing on this model."""
    if blocks.is_flux and mid_w is not None:
        return ["mid= has no block on a Flux model and is ignored (in= scales the double blocks, out= the single "
                "blocks)"]
    return []


def layer_factor(blocks: BlockLayout, lbw: str | None = None, in_w: float | None = None, mid_w: float | None = None,
                 out_w: float | None = None, user_presets: dict[str, list[float]] | None = None,
                 ) -> Callable[[TargetLayer], float] | None:
    """A function giving each layer's block factor on a model of layout `blocks`, or None when no block weight is
    set (or only Flux's ignored `mid=`). Raises BlockWeightError."""
    weights = lbw_values(lbw, blocks, user_presets) if lbw is not None else None
    if blocks.is_flux:  # in= the double blocks, out= the single blocks, mid= nothing (see `notices`)
        parts = ((FLUX_KINDS["double_blocks"], in_w), (FLUX_KINDS["single_blocks"], out_w))
    else:
        parts = (("unet.down_blocks.", in_w), ("unet.mid_block.", mid_w), ("unet.up_blocks.", out_w))
    parts = tuple((prefix, weight) for prefix, weight in parts if weight is not None)
    if weights is None and not parts:
        return None

    def factor(target: TargetLayer) -> float:
        block = blocks.block_of(target) or ""
        value = weights.get(block, 1.0) if weights is not None else 1.0
        where = block if blocks.is_flux else target.name
        for prefix, weight in parts:
            if where.startswith(prefix):
                value *= weight
        return value

    return factor
