"""A LoRA file's model family from its metadata and its tensor names and shapes (header only).

The key families come from `formats.keys` (the resolver's own prefix tables): SDXL-only text-encoder prefixes and
kohya's SGM UNet block names; widths come from the cross-attention and text-encoder layers.
"""

from __future__ import annotations

import re
from typing import Any

from .family import CONTEXT_WIDTHS, KOHYA_BASE_PREFIXES, MODELSPEC_MARKERS, TEXT_ENCODER_WIDTHS, SdVersion
from .keys import KOHYA_UNET_PREFIXES, SDXL_TEXT_PREFIXES

# Flux keys in every layout: BFL names (kohya, XLabs, BFL control LoRAs) and diffusers names (PEFT, ai-toolkit,
# LyCORIS, OneTrainer), which no UNet model has.
# (SD UNets have `transformer_blocks` too, but only inside `attentions`: Flux's sit at the top of the transformer.)
FLUX_KEY_RE = re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d"
                         r"|^(transformer\.|lora_transformer_|lycoris_)transformer_blocks[._]\d")
SGM_UNET_RE = re.compile("(" + "|".join(map(re.escape, KOHYA_UNET_PREFIXES))
                         + ")(input_blocks|output_blocks|middle_block|label_emb)")


def detect_sd_version(metadata: dict[str, Any], shapes: dict[str, list[int]]) -> SdVersion:
    """"SD1", "SD2", "SDXL", "Flux" or "Unknown" from the metadata and the tensor names/shapes (header only).

    Order: `modelspec.architecture`; kohya's `ss_base_model_version` / `ss_v2`; then the keys: Flux's block names
    (`double_blocks`/`single_blocks`, diffusers' `transformer_blocks`), SDXL-only names
    (`lora_te1_`/`lora_te2_`, `text_encoder_2.`, SGM `input_blocks_`/`output_blocks_` UNet names), then the width
    of the cross-attention context (768 SD1, 1024 SD2, 2048 SDXL) read from `attn2.to_k`'s input dimension, then the
    text-encoder width (768 SD1, 1024 SD2).
    """
    arch = str(metadata.get("modelspec.architecture", "")).lower()
    if arch:
        return next((version for marker, version in MODELSPEC_MARKERS if marker in arch), SdVersion.Unknown)
    base = str(metadata.get("ss_base_model_version", "")).lower()
    found = next((version for prefix, version in KOHYA_BASE_PREFIXES if base.startswith(prefix)), None)
    if found in (SdVersion.SDXL, SdVersion.Flux):
        return found
    if found is SdVersion.SD2 or str(metadata.get("ss_v2", "")) == "True":
        return SdVersion.SD2
    if found is not None:
        return found
    keys = list(shapes)
    if any(FLUX_KEY_RE.search(k) for k in keys):
        return SdVersion.Flux
    if any(k.startswith(SDXL_TEXT_PREFIXES) for k in keys):
        return SdVersion.SDXL
    if any(SGM_UNET_RE.match(k) for k in keys):
        return SdVersion.SDXL
    for key, shape in shapes.items():
        if re.search(r"attn2[._]to_k", key) and re.search(r"(lora_down|lora_A|lora\.down)\.weight$", key) and len(shape) >= 2:
            return CONTEXT_WIDTHS.get(shape[1], SdVersion.Unknown)
    for key, shape in shapes.items():
        if re.search(r"(^lora_te_|^text_encoder\.).*(mlp_fc1|mlp\.fc1)", key) and re.search(r"(down|lora_A)", key):
            return TEXT_ENCODER_WIDTHS.get(shape[-1] if len(shape) >= 2 else -1, SdVersion.Unknown)
    return SdVersion.Unknown
