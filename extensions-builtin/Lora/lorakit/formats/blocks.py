"""The one block taxonomy of a model's layers, in lora-block-weight's names, from the loaded model's LDM/SGM names
(`TargetLayer.ldm_name`, derived from the UNet config, so tiny and real models agree).

* UNet blocks: `input_blocks.N` -> `INnn`, `middle_block` -> `M00`, `output_blocks.N` -> `OUTnn`.
* `BASE` means the text encoder(s), and only that: lora-block-weight's first slot.
* UNet layers outside the blocks (time embedding, SDXL label embedding, final norm/conv) have no block: `None`
  for block weights (they keep weight 1); the "Where it acts" chart shows them as `OTHER`.
"""

from __future__ import annotations

import re

from .keys import TargetLayer

BASE = "BASE"  # lora-block-weight's slot of the text encoder(s)
OTHER = "OTHER"  # the chart's row for UNet layers outside the blocks
BLOCK_RE = re.compile(r"^(input_blocks|middle_block|output_blocks|double_blocks|single_blocks)(?:\.(\d+))?(?:\.|$)")
FLUX_KINDS = {"double_blocks": "DOUBLE", "single_blocks": "SINGLE"}  # Flux: `ldm_name` is the BFL module name


def unet_block(ldm_name: str | None) -> str | None:
    """`INnn`, `M00` or `OUTnn` for a UNet layer's LDM/SGM name (Flux: `DOUBLEnn`/`SINGLEnn` for its BFL name); None
    outside the blocks."""
    match = BLOCK_RE.match(ldm_name or "")
    if not match:
        return None
    kind, number = match.group(1), int(match.group(2) or 0)
    if kind == "middle_block":
        return "M00"
    if kind in FLUX_KINDS:
        return f"{FLUX_KINDS[kind]}{number:02d}"
    return f"{'IN' if kind == 'input_blocks' else 'OUT'}{number:02d}"


def block_of(target: TargetLayer) -> str | None:
    """A layer's block for block weights: `BASE` for text-encoder layers, the UNet block, or None outside them."""
    return BASE if target.is_text_encoder else unet_block(target.ldm_name)


def chart_block(target: TargetLayer, text_encoders: int = 1) -> str:
    """A layer's row in the chart: `TE` (one encoder) or `TE1`/`TE2`, the UNet block, or `OTHER`."""
    if target.te_index is not None:
        return "TE" if text_encoders <= 1 else f"TE{target.te_index + 1}"
    return unet_block(target.ldm_name) or OTHER
