"""The one block taxonomy of a model's layers, in lora-block-weight's names, from the loaded model's LDM/SGM names
(`TargetLayer.ldm_name`, derived from the UNet config, so tiny and real models agree).

SD1/SD2/SDXL:
* UNet blocks: `input_blocks.N` -> `INnn`, `middle_block` -> `M00`, `output_blocks.N` -> `OUTnn`.
* `BASE` means the text encoder(s), and only that: lora-block-weight's first slot.
* UNet layers outside the blocks (time embedding, SDXL label embedding, final norm/conv) have no block: `None`
  for block weights (they keep weight 1); the "Where it acts" chart shows them as `OTHER`.

Flux.1 (`ldm_name` is the BFL module name, from `modules.flux_model.bfl_module_map`):
* `CLIP` (text encoder 0, CLIP-L) and `T5` (text encoder 1): one block each.
* `IN`: the input embedders `img_in`, `txt_in`, `time_in`, `vector_in`, `guidance_in`.
* `double_blocks.N` -> `DOUBLEnn`, `single_blocks.N` -> `SINGLEnn`.
* `OUT`: the final layer (`final_layer.*`).
These are lora-block-weight's Flux slots (its CLIP, T5, IN, D00.., S00.., OUT); the chart shows the same rows.

`BlockLayout` is one loaded model's layout (family, number of text encoders, Flux's double and single block counts
from `LoadedModel.unet.config`), so block weights and the chart name a layer's block the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .family import SdVersion
from .keys import TargetLayer

if TYPE_CHECKING:
    from modules.sd_model_types import LoadedModel

BASE = "BASE"  # lora-block-weight's slot of the text encoder(s)
OTHER = "OTHER"  # the chart's row for UNet layers outside the blocks
CLIP, T5 = "CLIP", "T5"  # Flux: text encoders 0 and 1
FLUX_IN, FLUX_OUT = "IN", "OUT"  # Flux: the input embedders and the final layer
BLOCK_RE = re.compile(r"^(input_blocks|middle_block|output_blocks|double_blocks|single_blocks)(?:\.(\d+))?(?:\.|$)")
FLUX_KINDS = {"double_blocks": "DOUBLE", "single_blocks": "SINGLE"}  # Flux: `ldm_name` is the BFL module name
FLUX_EMBEDDERS = ("img_in", "txt_in", "time_in", "vector_in", "guidance_in")
FLUX_FINAL = "final_layer"


def unet_block(ldm_name: str | None) -> str | None:
    """`INnn`, `M00` or `OUTnn` for a UNet layer's LDM/SGM name (Flux: `DOUBLEnn`/`SINGLEnn`, `IN` for the embedders,
    `OUT` for the final layer, from its BFL name); None outside the blocks."""
    name = ldm_name or ""
    head = name.split(".", 1)[0]
    if head in FLUX_EMBEDDERS:
        return FLUX_IN
    if head == FLUX_FINAL:
        return FLUX_OUT
    match = BLOCK_RE.match(name)
    if not match:
        return None
    kind, number = match.group(1), int(match.group(2) or 0)
    if kind == "middle_block":
        return "M00"
    if kind in FLUX_KINDS:
        return f"{FLUX_KINDS[kind]}{number:02d}"
    return f"{'IN' if kind == 'input_blocks' else 'OUT'}{number:02d}"


def block_order(label: str) -> tuple[int, int]:
    """Display order of block labels: text encoders, `OTHER`, then the blocks in the order the model runs them
    (UNet: IN, M, OUT; Flux: IN, DOUBLE, SINGLE, OUT)."""
    fixed = {CLIP: (0, 1), T5: (0, 2), FLUX_OUT: (8, 0)}  # Flux's names without a number (T5's is part of it)
    if label in fixed:
        return fixed[label]
    ranks = {"TE": 0, OTHER: 2, "IN": 3, "M": 4, "OUT": 5, "DOUBLE": 6, "SINGLE": 7}
    match = re.match(r"([A-Z]+?)(\d*)$", label)
    head, digits = (match.group(1), match.group(2)) if match else (label, "")
    return ranks.get(head, 9), int(digits or 0)


@dataclass(frozen=True)
class BlockLayout:
    """The block layout of one loaded model: `family`, how many text encoders, and (Flux) how many double and
    single blocks. `of_model` reads them from the model, so a tiny test model and a real one share every path."""

    family: str
    text_encoders: int = 1
    double_blocks: int = 0
    single_blocks: int = 0

    @classmethod
    def of_model(cls, model: LoadedModel) -> BlockLayout:
        """The layout of a loaded model (Flux: `num_layers` / `num_single_layers` of its transformer config)."""
        encoders = len(model.text_encoders)
        if model.family != SdVersion.Flux:
            return cls(model.family, encoders)
        config = model.unet.config
        return cls(model.family, encoders, int(config["num_layers"]), int(config["num_single_layers"]))

    @property
    def is_flux(self) -> bool:
        return self.family == SdVersion.Flux

    def flux_blocks(self) -> list[str]:
        """Flux's blocks in lora-block-weight's slot order: CLIP, T5, IN, DOUBLE00.., SINGLE00.., OUT."""
        double, single = FLUX_KINDS["double_blocks"], FLUX_KINDS["single_blocks"]
        return [CLIP, T5, FLUX_IN, *[f"{double}{i:02d}" for i in range(self.double_blocks)],
                *[f"{single}{i:02d}" for i in range(self.single_blocks)], FLUX_OUT]

    def block_of(self, target: TargetLayer) -> str | None:
        """A layer's block for block weights: `BASE` (Flux: `CLIP`/`T5`) for text-encoder layers, the UNet or
        transformer block, or None outside them."""
        if target.te_index is not None:
            if self.is_flux:
                return (CLIP, T5)[target.te_index] if target.te_index < 2 else None
            return BASE
        return unet_block(target.ldm_name)

    def chart_block(self, target: TargetLayer) -> str:
        """A layer's row in the chart: `TE` (one encoder) or `TE1`/`TE2` (Flux: `CLIP`/`T5`), the block, or
        `OTHER`."""
        if target.te_index is not None and not self.is_flux:
            return "TE" if self.text_encoders <= 1 else f"TE{target.te_index + 1}"
        return self.block_of(target) or OTHER
