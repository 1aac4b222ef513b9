"""One key resolver: maps the layer names of every LoRA key family onto the loaded model's modules.

Families understood (each normalised to one underscore form, then looked up in an index built from the model):
* kohya SD1/SD2: `lora_unet_down_blocks_0_attentions_0_proj_in`, `lora_te_text_model_encoder_layers_0_mlp_fc1`
* kohya SDXL: SGM/LDM block names `lora_unet_input_blocks_4_1_...`, and `lora_te1_...` / `lora_te2_...`
* A1111 compvis names: `diffusion_model_input_blocks_1_1_proj_in`, `transformer_text_model_...`, `0_transformer_...`
* diffusers / PEFT: `unet.down_blocks.0.attentions.0.proj_in` (+ `lora_A`/`lora_B`), `text_encoder.`, `text_encoder_2.`,
  the older attention-processor form `...attn1.processor.to_q_lora.down.weight`, a `base_model.model.` prefix
* LyCORIS: `lycoris_<diffusers name>`; kohya OFT: `oft_unet_...`; OneTrainer (kohya-style, plus `lora_te2_text_projection`)
* Flux.1 (the transformer in `LoadedModel.unet`): kohya BFL names `lora_unet_double_blocks_0_img_attn_qkv`,
  `lora_unet_single_blocks_0_linear1` (`lora_te1_` CLIP-L, `lora_te2_`/`lora_te3_` T5); diffusers/PEFT and ai-toolkit
  `transformer.transformer_blocks.0.attn.to_q.lora_A.weight`; XLabs `double_blocks.0.processor.qkv_lora1.down.weight`;
  OneTrainer `lora_transformer_...`; SimpleTuner/LyCORIS `lycoris_transformer_blocks_0_attn_to_q`; BFL's own
  dotted layout of its control LoRAs `double_blocks.0.img_attn.qkv.lora_A.weight` (+ `lora_B.bias`, and RMSNorm
  `...query_norm.scale` stored whole, read as `set_weight`). BFL's fused
  projections (`img_attn.qkv`, `txt_attn.qkv`, a single block's `linear1` = q, k, v, mlp, and its `qkv` part) resolve
  to several split diffusers layers, each with the rows of the fused output it is (`Placement.rows`); the BFL names
  come from `modules.flux_model.bfl_module_map` of the loaded transformer's config.

UNet modules are indexed under their diffusers path and under their LDM/SGM path, which `LoadedModel.ldm_unet_names`
derives from the UNet config (so tiny test models and real ones go through the same code). Text-encoder modules are
indexed without the `text_model.` prefix (transformers 5 drops it for `CLIPTextModel` but keeps it for
`CLIPTextModelWithProjection`), so both spellings in files match.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from modules.sd_model_types import LoadedModel

PATCHABLE_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
RMS_NORM_TYPES = (torch.nn.RMSNorm,)  # Flux's q/k norms (BFL control LoRAs train their `scale` as full weights)

# PEFT/diffusers part names -> kohya part names, longest first: the one rename table, used by `split_key` for dotted
# keys and by the LoRA strategy for groups whose parts kept PEFT's names (`lora_unet_x.lora_A.weight`). PEFT's DoRA
# magnitude (out,) is a per-output-row norm, i.e. LyCORIS' default `dora_scale` layout.
DOTTED_PARTS = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_magnitude_vector.weight": "dora_scale",
    "lora_magnitude_vector": "dora_scale",
    "lora_B.bias": "lora_up.bias",  # PEFT's lora_bias, BFL control LoRAs
    "lora_A.bias": "lora_down.bias",
}
DOTTED_PREFIXES = ("unet.", "transformer.", "text_encoder.", "text_encoder_2.", "base_model.model.")
# Layer-key prefixes -> the part of the model they name ("unet", "te0" = first text encoder, "te1" = second), in the
# order they are tried; the SD-version detector reads its key families from the same tables.
KEY_PREFIXES = (
    ("lora_unet_", "unet"), ("lycoris_", "unet"), ("oft_unet_", "unet"), ("diffusion_model_", "unet"),
    ("unet.", "unet"), ("transformer.", "unet"), ("lora_transformer_", "unet"),
    ("lora_te1_", "te0"), ("lora_te2_", "te1"), ("lora_te3_", "te1"), ("lora_te_", "te0"),
    ("text_encoder_2.", "te1"), ("text_encoder.", "te0"), ("0_transformer_", "te0"), ("transformer_", "te0"),
)
KOHYA_UNET_PREFIXES = ("lora_unet_", "lycoris_unet_", "oft_unet_")  # kohya-style UNet keys (SGM names on SDXL)
SDXL_TEXT_PREFIXES = ("lora_te1_", "lora_te2_", "text_encoder_2.")  # keys only SDXL files (two encoders) have
PROCESSOR_RE = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora\.(up|down)\.weight$")
# XLabs Flux LoRAs: `[diffusion_model.]double_blocks.N.processor.<part>.(down|up).weight`, parts named for the BFL
# module they train (img = stream 1, txt = stream 2; single blocks: qkv of linear1, and linear2).
XLABS_RE = re.compile(r"^(?:diffusion_model\.)?(double_blocks|single_blocks)\.(\d+)\.processor\."
                      r"(qkv_lora1|qkv_lora2|proj_lora1|proj_lora2|qkv_lora|proj_lora)\.(down|up)\.weight$")
# BFL's own LoRA layout (Flux control LoRAs: Canny, Depth): dotted BFL module names with PEFT parts and biases, plus
# trained RMSNorm scales stored whole (`...query_norm.scale`: a `set_weight`, not the scalar `scale` part).
BFL_DOTTED_RE = re.compile(r"^(?:diffusion_model\.)?((?:double_blocks|single_blocks)\.\d+\.[\w.]+?|img_in|txt_in|"
                           r"(?:time_in|vector_in|guidance_in)\.(?:in_layer|out_layer)|final_layer\.[\w.]+?)\."
                           r"(lora_A\.weight|lora_B\.weight|lora_A\.bias|lora_B\.bias|alpha|scale)$")
XLABS_PARTS = {"qkv_lora1": "img_attn.qkv", "qkv_lora2": "txt_attn.qkv", "proj_lora1": "img_attn.proj",
               "proj_lora2": "txt_attn.proj", "qkv_lora": "qkv", "proj_lora": "linear2"}


@dataclass(frozen=True)
class TargetLayer:
    """A patchable module of the loaded model.

    `name`: "unet.<path>" or "text_encoders.<i>.<path>"; `te_index`: None for the UNet; `ldm_name`: the LDM/SGM path
    for UNet modules ("input_blocks.1.1.proj_in"), used for block weights.
    """

    name: str
    module: torch.nn.Module
    te_index: int | None
    ldm_name: str | None

    @property
    def is_text_encoder(self) -> bool:
        return self.te_index is not None


def split_key(key: str) -> tuple[str, str]:
    """Split a file key into (layer key, part) as the loader groups them.

    kohya-style keys have no dot in the layer part: split at the first dot (`lora_unet_x.lora_down.weight`).
    Dotted keys (diffusers/PEFT) are split before the adapter part (`unet.a.b.lora_A.weight` -> `unet.a.b`,
    `lora_down.weight`); the old processor form `attn1.processor.to_q_lora.down.weight` becomes `attn1.to_q`.
    """
    xlabs = XLABS_RE.match(key)
    if xlabs:  # grouped under the kohya spelling of the BFL module it trains
        kind, number, part, side = xlabs.groups()
        return f"lora_unet_{kind}_{number}_{XLABS_PARTS[part].replace('.', '_')}", f"lora_{side}.weight"
    bfl = BFL_DOTTED_RE.match(key)
    if bfl:  # grouped under the kohya spelling of the BFL module, as XLabs keys are
        module, part = bfl.groups()
        part = "set_weight" if part == "scale" and module.endswith("_norm") else DOTTED_PARTS.get(part, part)
        return "lora_unet_" + module.replace(".", "_"), part
    match = PROCESSOR_RE.search(key)
    if match:
        target = {"to_out": "to_out.0"}.get(match.group(1), match.group(1))
        return key[: match.start()] + "." + target, f"lora_{match.group(2)}.weight"
    if key.startswith(DOTTED_PREFIXES):
        for part, renamed in DOTTED_PARTS.items():
            if key.endswith("." + part):
                return key[: -len(part) - 1], renamed
        layer, _, part = key.rpartition(".")
        return layer, part  # alpha, dora_scale, hada_*, ...; an unknown part is reported by the strategy registry
    layer, _, part = key.partition(".")
    return layer, part


@dataclass(frozen=True)
class Placement:
    """Where a LoRA layer key acts: a target layer, and for a key naming a fused projection (BFL's `img_attn.qkv`),
    the rows of the fused output that are this layer (`rows` = [(start, stop), ...] concatenated in the layer's row
    order; `fused_rows` = the fused output's height). `rows` None: the key names the layer itself."""

    target: TargetLayer
    rows: tuple[tuple[int, int], ...] | None = None
    fused_rows: int | None = None


class LayerIndex:
    """Every patchable module of a `LoadedModel`, findable by any spelling of its name in LoRA files."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.layers: dict[str, TargetLayer] = {}
        self._lookup: dict[str, TargetLayer] = {}
        self._fused: dict[str, list[Placement]] = {}  # "unet:<BFL fused name>" -> its split layers
        if model.is_flux:
            self._index_flux(model)
        else:
            self._index_unet(model)
        for index, encoder in enumerate(model.text_encoders):
            self._index_text_encoder(index, encoder)

    def _add(self, target: TargetLayer, *spellings: str) -> None:
        self.layers[target.name] = target
        for spelling in spellings:
            self._lookup.setdefault(spelling, target)

    def _index_unet(self, model: LoadedModel) -> None:
        for path, module in model.unet.named_modules():
            if not isinstance(module, PATCHABLE_TYPES) or getattr(module, "weight", None) is None:
                continue
            ldm = model.ldm_unet_names.get(path)
            target = TargetLayer(name=f"unet.{path}", module=module, te_index=None, ldm_name=ldm)
            spellings = ["unet:" + path.replace(".", "_")]
            if ldm:
                spellings.append("unet:" + ldm.replace(".", "_"))
            self._add(target, *spellings)

    def _index_flux(self, model: LoadedModel) -> None:
        """The Flux transformer under its diffusers names and its BFL names (`TargetLayer.ldm_name` = the BFL module,
        fused or not); fused BFL projections become `Placement`s with the rows of each split layer."""
        from modules.flux_model import bfl_module_map, single_block_qkv  # noqa: PLC0415

        bfl_names = bfl_module_map(model.unet.config)
        fused: dict[str, list[tuple[str, int, int]]] = {}
        for path, module in model.unet.named_modules():
            if not isinstance(module, PATCHABLE_TYPES + RMS_NORM_TYPES) or getattr(module, "weight", None) is None:
                continue
            bfl = bfl_names.get(path)
            bfl_path = bfl[0] if isinstance(bfl, tuple) else bfl
            target = TargetLayer(name=f"unet.{path}", module=module, te_index=None, ldm_name=bfl_path)
            spellings = ["unet:" + path.replace(".", "_")]
            if isinstance(bfl, str) and path != "norm_out.linear":  # norm_out's rows are BFL's swapped: a fused case
                spellings.append("unet:" + bfl.replace(".", "_"))
            self._add(target, *spellings)
            if isinstance(bfl, tuple):
                fused.setdefault(bfl[0], []).append((target.name, bfl[1], bfl[2]))
        for bfl, members in {**fused, **single_block_qkv(bfl_names)}.items():
            height = max(stop for _, _, stop in members)
            placements = [Placement(self.layers[name], ((start, stop),), height) for name, start, stop in members]
            self._fused["unet:" + bfl.replace(".", "_")] = placements
        if "unet.norm_out.linear" in self.layers:  # BFL (shift, scale) = diffusers (scale, shift)
            rows = int(self.layers["unet.norm_out.linear"].module.weight.shape[0])
            half = rows // 2
            self._fused["unet:final_layer_adaLN_modulation_1"] = [
                Placement(self.layers["unet.norm_out.linear"], ((half, rows), (0, half)), rows)]

    def _index_text_encoder(self, index: int, encoder: torch.nn.Module) -> None:
        for path, module in encoder.named_modules():
            if not isinstance(module, PATCHABLE_TYPES) or getattr(module, "weight", None) is None:
                continue
            short = path[len("text_model."):] if path.startswith("text_model.") else path
            target = TargetLayer(name=f"text_encoders.{index}.{path}", module=module, te_index=index, ldm_name=None)
            self._add(target, f"te{index}:" + short.replace(".", "_"))

    def _normalise(self, layer_key: str) -> list[str]:
        """Candidate lookup spellings ("unet:<name>" / "te<i>:<name>") for one layer key, most specific first."""
        sdxl = self.model.is_sdxl
        key = layer_key
        if key.startswith("base_model.model."):
            key = key[len("base_model.model."):]
            candidates = ["unet:" + key.replace(".", "_")]
            return candidates + [f"te{i}:" + self._strip_text_model(key.replace(".", "_")) for i in range(2)]
        for prefix, part in KEY_PREFIXES:
            if key.startswith(prefix):
                rest = key[len(prefix):].replace(".", "_")
                if part == "unet":
                    found = ["unet:" + rest]
                    if prefix == "lycoris_":  # LyCORIS' generic prefix names text-encoder layers the same way
                        found += [f"te{i}:" + self._strip_text_model(rest) for i in range(2 if sdxl else 1)]
                    return found
                return [f"{part}:" + self._strip_text_model(rest)]
        return []

    @staticmethod
    def _strip_text_model(rest: str) -> str:
        return rest[len("text_model_"):] if rest.startswith("text_model_") else rest

    def resolve(self, layer_key: str) -> TargetLayer | None:
        """The module a LoRA layer key refers to, or None (also for a fused projection: see `resolve_placements`)."""
        for candidate in self._normalise(layer_key):
            target = self._lookup.get(candidate)
            if target is not None:
                return target
        return None

    def resolve_placements(self, layer_key: str) -> list[Placement]:
        """Where a LoRA layer key acts: one layer, the split layers of a fused projection (Flux), or nothing."""
        for candidate in self._normalise(layer_key):
            target = self._lookup.get(candidate)
            if target is not None:
                return [Placement(target)]
            if candidate in self._fused:
                return list(self._fused[candidate])
        return []


def kohya_key(target_name: str, text_encoder_count: int) -> str:
    """The kohya file key of a target layer ("unet.a.b" -> "lora_unet_a_b", "text_encoders.0.encoder.layers.0.mlp.fc1"
    -> "lora_te_text_model_encoder_layers_0_mlp_fc1", SDXL: "lora_te1_..."/"lora_te2_..."), as trainers write them."""
    if target_name.startswith("unet."):
        return "lora_unet_" + target_name[len("unet."):].replace(".", "_")
    _, index, path = target_name.split(".", 2)
    if path == "text_projection":
        return f"lora_te{int(index) + 1}_text_projection"
    path = path[len("text_model."):] if path.startswith("text_model.") else path
    prefix = "lora_te_" if text_encoder_count == 1 else f"lora_te{int(index) + 1}_"
    return prefix + "text_model_" + path.replace(".", "_")
