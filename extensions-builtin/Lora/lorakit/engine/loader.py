"""The loader: one LoRA file read against the loaded model.

`load_network(entry, index)` reads a file once (safetensors memory-mapped), groups its tensors per layer, asks the
strategy registry for each group's module, resolves each layer key to a model module and checks shapes. Keys that
match no layer, groups no strategy claims and shape mismatches are recorded on the `Network` (never silently
dropped: `Network.problems()`); a LoRA made for another architecture is refused with a message saying so.
`diffusers_cannot(network)` says what in a loaded file only native merge can apply.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch

from ..algorithms.base import Delta, NetworkModule
from ..algorithms.registry import create_module
from ..errors import LoraError
from ..formats import files
from ..formats.family import KNOWN, SdVersion
from ..formats.keys import LayerIndex, Placement, TargetLayer, split_key
from ..formats.peft_metadata import pattern_alpha, peft_alphas
from ..formats.sd_version import detect_sd_version
from ..library.registry import NetworkOnDisk
from .projections import FusedRowsModule

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
PEFT_PARTS = ("unet", "transformer", "text_encoder", "text_encoder_2")  # state-dict prefixes of diffusers' LoRA files


class NetworkLoadError(LoraError):
    """A LoRA that cannot be applied to the loaded model; the message says why."""


class NothingFitsError(NetworkLoadError):
    """A LoRA for the loaded model's family of which the native loader placed no layer (the diffusers method may).
    `network` holds what the loader found (unmatched keys, unsupported groups, shape errors)."""

    def __init__(self, message: str, network: Network) -> None:
        super().__init__(message)
        self.network = network

    def without_tensors(self) -> NothingFitsError:
        """A copy to keep (the engine remembers it per file version): the same message and key lists, no bundled
        embedding tensors, no traceback (whose frames hold the file's tensors)."""
        kept = Network(name=self.network.name, on_disk=self.network.on_disk, mtime=self.network.mtime,
                       unmatched_keys=list(self.network.unmatched_keys), unsupported=list(self.network.unsupported),
                       shape_errors=list(self.network.shape_errors),
                       partly_applied=list(self.network.partly_applied))
        return NothingFitsError(str(self), kept)


@dataclass
class Network:
    """A LoRA file loaded against one model: its modules by target layer name, and what did not fit."""

    name: str
    on_disk: NetworkOnDisk
    mtime: float
    modules: dict[str, NetworkModule | InputChannelsModule | FusedRowsModule] = field(default_factory=dict)  # target layer name -> module
    targets: dict[str, TargetLayer] = field(default_factory=dict)
    unmatched_keys: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)  # "key: reason"
    shape_errors: list[str] = field(default_factory=list)  # "key: reason"
    partly_applied: list[str] = field(default_factory=list)  # "key: what of it has no effect here"
    bundle_embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Human-readable summary lines of everything in the file that was not applied."""
        lines = []
        for label, items in (("keys matched no layer of the loaded model", self.unmatched_keys),
                             ("layers no strategy understands", self.unsupported),
                             ("layers with shapes for another model", self.shape_errors),
                             ("layers applied in part", self.partly_applied)):
            if items:
                examples = ", ".join(items[:MAX_EXAMPLES]) + (", ..." if len(items) > MAX_EXAMPLES else "")
                lines.append(f"{self.name}: {len(items)} {label} (e.g. {examples})")
        return lines


class InputChannelsModule:
    """Applies a module made for a layer with another number of input channels (dimension 1 of the weight).

    * Fewer (a 4-channel LoRA on a 9-channel inpainting `conv_in`): the delta is computed on the first `inner_in`
      input channels and zero-padded to the layer's.
    * More (a Flux control LoRA's `img_in`, 128 inputs: the image latents then the control image's, on the model's 64):
      the delta is computed for the layer widened with zero columns (diffusers' expansion of `x_embedder`) and its
      first `layer_in` columns are kept: exact for the image channels; the control channels get no input here.
    """

    def __init__(self, inner: NetworkModule, inner_in: int, layer_in: int) -> None:
        self.inner = inner
        self.inner_in, self.layer_in = inner_in, layer_in
        self.algorithm = inner.algorithm
        self.rank, self.alpha, self.key = inner.rank, inner.alpha, inner.key
        self.is_dora = getattr(inner, "is_dora", False)

    def low_rank(self, multiplier: float, dyn_dim: int | None = None) -> None:
        return None

    def calc_delta(self, weight: torch.Tensor, multiplier: float, dyn_dim: int | None = None,
                   bias: torch.Tensor | None = None) -> Delta:
        if self.inner_in < self.layer_in:
            delta = self.inner.calc_delta(weight[:, : self.inner_in].contiguous(), multiplier, dyn_dim, bias)
            if delta.weight is not None:
                padded = torch.zeros(weight.shape, dtype=delta.weight.dtype, device=delta.weight.device)
                padded[:, : self.inner_in] = delta.weight.reshape(padded[:, : self.inner_in].shape)
                delta.weight = padded
            return delta
        widened = torch.zeros((weight.shape[0], self.inner_in, *weight.shape[2:]), dtype=weight.dtype,
                              device=weight.device)
        widened[:, : self.layer_in] = weight
        delta = self.inner.calc_delta(widened, multiplier, dyn_dim, bias)
        if delta.weight is not None:
            delta.weight = delta.weight.reshape(widened.shape)[:, : self.layer_in].contiguous()
        return delta


def group_tensors(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict]]:
    """Group file tensors per layer key; `bundle_emb.NAME.*` tensors are returned separately per embedding."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    embeddings: dict[str, dict] = {}
    for key, tensor in tensors.items():
        if key.startswith("bundle_emb."):
            _, emb_name, rest = key.split(".", 2) if key.count(".") >= 2 else (key, key, "")
            embeddings.setdefault(emb_name, {})[rest] = tensor
            continue
        layer, part = split_key(key)
        groups.setdefault(layer, {})[part] = tensor
    return groups, embeddings


def load_network(entry: NetworkOnDisk, index: LayerIndex, name: str | None = None) -> Network:
    """Load `entry` against the model behind `index`. Raises LoraFileError / NetworkLoadError with clear messages."""
    model = index.model
    version = entry.effective_sd_version
    if version in KNOWN and version != model.family:
        raise NetworkLoadError(
            f"{entry.name} is a LoRA for {version}, but the loaded model is {model.family}: not applied"
        )
    tensors = files.load_tensors(entry.filename)
    if version == SdVersion.Unknown and not entry.is_safetensors:
        version = detect_sd_version({}, {k: list(v.shape) for k, v in tensors.items()})
        if version in KNOWN and version != model.family:
            raise NetworkLoadError(
                f"{entry.name} is a LoRA for {version}, but the loaded model is {model.family}: not applied"
            )
    net = Network(name=name or entry.name, on_disk=entry, mtime=os.path.getmtime(entry.filename))
    groups, net.bundle_embeddings = group_tensors(tensors)
    alphas_by_part = {part: peft_alphas(entry.metadata, part) for part in ("", *PEFT_PARTS)}
    for layer_key, parts in groups.items():
        placements = index.resolve_placements(layer_key)
        if not placements:
            net.unmatched_keys.append(layer_key)
            continue
        target = placements[0].target
        if "." in layer_key and "lora_down.weight" in parts:  # PEFT/diffusers layout
            part_name = layer_key.split(".")[0]
            peft_alpha, peft_pattern = alphas_by_part[part_name if part_name in PEFT_PARTS else ""]
            if "alpha" not in parts and peft_alpha is not None:
                alpha = pattern_alpha(peft_pattern, layer_key)
                alpha = peft_alpha if alpha is None else alpha
                parts = {**parts, "alpha": torch.tensor(alpha)}
            if "dora_scale" in parts:  # PEFT's magnitude is per output row: (out,), or (1, out, 1, 1) for convs
                weight_dim = target.module.weight.dim()
                parts = {**parts, "dora_scale": parts["dora_scale"].reshape(-1, *[1] * (weight_dim - 1))}
        try:
            module = create_module(layer_key, parts)
        except LoraError as exc:
            net.unsupported.append(f"{layer_key}: {exc}")
            continue
        for placement in placements:
            _place(net, layer_key, module, placement)
    if not net.modules:
        detail = "; ".join(net.problems()) or "the file has no layers"
        raise NothingFitsError(f"{entry.name}: nothing in it fits the loaded {model.family} model ({detail})", net)
    for line in net.problems():
        log.warning("Lora %s", line)
    return net


def _place(net: Network, layer_key: str, module: NetworkModule, placement: Placement) -> None:
    """Put `module` on the placement's layer (through `FusedRowsModule` for a fused projection), or record why not."""
    target = placement.target
    weight = target.module.weight
    placed: NetworkModule | InputChannelsModule | FusedRowsModule = module
    try:
        if placement.rows is not None:
            placed = FusedRowsModule(module, placement.rows, int(placement.fused_rows or 0))
        placed.validate(weight.shape)
    except LoraError as exc:
        fitted = _fit_input_channels(module, weight.shape, target) if placement.rows is None else None
        if fitted is None:
            net.shape_errors.append(f"{layer_key}: {exc}")
            return
        placed = fitted
        if fitted.inner_in > fitted.layer_in:
            net.partly_applied.append(
                f"{layer_key}: a control LoRA's {fitted.inner_in} input channels on the model's {fitted.layer_in} (the "
                f"{fitted.inner_in - fitted.layer_in} control-image channels get no input: this WebUI has no Flux "
                "control-image input yet)")
    if target.name in net.modules:
        net.shape_errors.append(f"{layer_key}: a second group for layer {target.name}")
        return
    net.modules[target.name] = placed
    net.targets[target.name] = target


# Layers whose input channels a LoRA may have more or fewer of: SD inpainting's conv_in (9 = 4 latents + 5 mask and
# masked image), Flux's img_in (a control LoRA's 128 = 64 latents + 64 control image).
PADDED_INPUTS = ("conv_in",)
WIDENED_INPUTS = ("unet.x_embedder",)


def _fit_input_channels(module: NetworkModule, shape: torch.Size, target: TargetLayer) -> InputChannelsModule | None:
    """`module` wrapped for the layer's input channels (see InputChannelsModule), or None if that is not the mismatch:
    a 4-channel module on a wider `conv_in`, or a wider LoRA (`lora_down` columns) on Flux's `img_in`."""
    if len(shape) == 4 and shape[1] > 4 and target.name.endswith(PADDED_INPUTS):
        inner_in = 4
    elif target.name in WIDENED_INPUTS and "lora_down.weight" in getattr(module, "weights", {}):
        inner_in = int(module.weights["lora_down.weight"].shape[1])
        if inner_in <= shape[1]:
            return None
    else:
        return None
    try:
        module.validate(torch.Size([shape[0], inner_in, *shape[2:]]))
    except LoraError:
        return None
    return InputChannelsModule(module, inner_in, int(shape[1]))


def diffusers_cannot(network: Network) -> str | None:
    """What in a natively loaded file diffusers' loader does not apply (LyCORIS algorithms other than LoRA/LoCon,
    Tucker `lora_mid`, DoRA, the legacy weight offset, other input channels than the layer's), or None."""
    modules = list(network.modules.values())
    features = sorted({str(m.algorithm) for m in modules} - {"LoRA"})
    checks = (("Tucker (lora_mid)", lambda m: "lora_mid.weight" in getattr(m, "weights", {})),
              ("DoRA", lambda m: getattr(m, "is_dora", False)),
              ("LyCORIS weight offsets", lambda m: getattr(m, "weight_offset", None) is not None),
              ("input channels other than the layer's (inpainting conv_in, Flux control img_in)",
               lambda m: isinstance(m, InputChannelsModule)))
    features += [label for label, check in checks if any(check(m) for m in modules)]
    return ", ".join(features) or None
