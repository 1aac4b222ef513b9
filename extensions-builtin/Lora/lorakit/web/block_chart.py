"""Per-block strength of a LoRA: the norm of the weight change it makes in each UNet block and text encoder.

For every layer a network patches, the delta at multiplier 1 is computed by the layer's own strategy
(`NetworkModule.calc_delta`, so LoHa/LoKr/OFT/DoRA count exactly as they are applied) and its Frobenius norm is
summed in quadrature per block: `strength(block) = sqrt(sum over layers of ||delta||^2)`.

Blocks are named as in the lora-block-weight convention, from the layer's LDM/SGM name (`TargetLayer.ldm_name`), by
`formats.blocks.BlockLayout.chart_block` (the one taxonomy, shared with block weights): `input_blocks.N` -> `INnn`,
`middle_block` -> `M00`, `output_blocks.N` -> `OUTnn`; other UNet layers (time embedding, conv_in, out) -> `OTHER`;
text-encoder layers -> `TE` (one encoder) or `TE1`/`TE2` (`BASE` in lora-block-weight). Flux: `CLIP`, `T5`, `IN`
(embedders), `DOUBLEnn`, `SINGLEnn`, `OUT` (final layer), exactly the slots of its `lbw=` vector. The block list comes
from the loaded model, so tiny test models and full-size ones show their own blocks, including the untouched ones.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import torch

from ..engine.engine import LoraEngine, Network
from ..formats.blocks import CLIP, OTHER, T5, BlockLayout, block_order
from ..formats.keys import LayerIndex, TargetLayer


def block_label(target: TargetLayer, layout: BlockLayout) -> str:
    """The chart row of a `TargetLayer`: TE/TE1/TE2, IN00.., M00, OUT00.., OTHER; Flux: CLIP, T5, IN, DOUBLEnn,
    SINGLEnn, OUT (`formats.blocks.BlockLayout.chart_block`)."""
    return layout.chart_block(target)


def model_blocks(index: LayerIndex) -> list[str]:
    """Every block label of the model behind a `LayerIndex`, in display order (`formats.blocks.block_order`)."""
    layout = BlockLayout.of_model(index.model)
    labels = {block_label(target, layout) for target in index.layers.values()}
    return sorted(labels, key=block_order)


@dataclass
class BlockStrength:
    """The result for one network: `blocks` maps label -> (norm, number of patched layers), in display order."""

    name: str
    blocks: dict[str, tuple[float, int]] = field(default_factory=dict)

    @property
    def peak(self) -> float:
        return max((norm for norm, _ in self.blocks.values()), default=0.0)


@torch.no_grad()
def compute_block_strength(engine: LoraEngine, network: Network) -> BlockStrength:
    """Delta norms per block for a `Network` loaded by `engine` (`engine.network(entry)`) on its model. Each delta
    is computed at the layer's pristine weight (`engine.delta_at_pristine`), so the chart of a file whose delta
    depends on the weight (IA3, OFT, BOFT, GLoRA, DoRA) is the same whatever else is active."""
    index = engine.snapshot().index
    if index is None:
        raise RuntimeError("no model is loaded")
    layout = BlockLayout.of_model(index.model)
    squares: dict[str, float] = dict.fromkeys(model_blocks(index), 0.0)
    counts: dict[str, int] = dict.fromkeys(squares, 0)
    for layer_name in network.modules:
        target = network.targets[layer_name]
        delta = engine.delta_at_pristine(network, layer_name)
        value = 0.0
        if delta.weight is not None:
            value += float(torch.linalg.vector_norm(delta.weight.float())) ** 2
        if delta.bias is not None:
            value += float(torch.linalg.vector_norm(delta.bias.float())) ** 2
        label = block_label(target, layout)
        squares[label] = squares.get(label, 0.0) + value
        counts[label] = counts.get(label, 0) + 1
    ordered = [label for label in sorted(squares, key=block_order) if label != OTHER or counts[label]]
    return BlockStrength(network.name, {label: (math.sqrt(squares[label]), counts[label]) for label in ordered})


def render_block_strength(result: BlockStrength) -> str:
    """HTML bars (one row per block, width relative to the strongest block); every text is escaped."""
    peak = result.peak or 1.0
    rows = []
    for label, (norm, layers) in result.blocks.items():
        percent = 100.0 * norm / peak if result.peak else 0.0
        kind = "te" if label.startswith("TE") or label in (CLIP, T5) else ("other" if label == OTHER else "unet")
        title = html.escape(f"{label}: delta norm {norm:.4g} over {layers} layer(s)", quote=True)
        rows.append(
            f"<div class='lora-block-row' title='{title}' data-block='{html.escape(label, quote=True)}'>"
            f"<span class='lora-block-label'>{html.escape(label)}</span>"
            f"<span class='lora-block-track'><span class='lora-block-bar lora-block-{kind}' "
            f"style='width:{percent:.1f}%'></span></span>"
            f"<span class='lora-block-value'>{norm:.3g}</span></div>"
        )
    return ("<div class='lora-blocks'><div class='lora-blocks-caption'>Delta norm per block "
            "(||&Delta;W|| at weight 1)</div>" + "".join(rows) + "</div>")
