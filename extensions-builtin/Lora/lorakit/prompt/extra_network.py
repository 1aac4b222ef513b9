"""The `lora` extra network (alias `lyco`): turns `<lora:...>` tags (parsed by `prompt.tags`) into engine requests,
re-applies scheduled ones per step, reports problems, writes the `Lora hashes` infotext (`prompt.infotext`).

A malformed tag (`<lora:x:abc>`, `<lora:x:>`, a NaN weight) is reported in the generation's comments naming the tag,
and the other LoRAs in the prompt still apply (A1111 drops all of them). A name whose file the registry scan skipped
(truncated, not a safetensors file, ...) is reported with the scan's reason rather than as "not found". A tag naming
a stem that several files share gets a notice listing them and saying which one was applied (the first in path
order); an alias shared by several files applies none and lists them. A block weight that the model accepts but ignores
(`mid=` on Flux, see `prompt.block_weights`) gets a notice naming the tag.

The `lora_method` setting picks how LoRAs are applied ("native merge" or "diffusers" adapters, see `engine.peft_method`,
which also documents the `Lora method` infotext written here).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modules.extra_networks import ExtraNetwork, ExtraNetworkParams, add_comment
from modules.generation_state import GenerationRequest
from modules.textual_inversion import EmbeddingDatabase

from ..engine import peft_method
from ..engine.engine import ActivationReport, EngineStartError, LoraEngine, NetworkRequest
from ..formats.blocks import BlockLayout
from . import block_weights
from .bundled_embeddings import sync_bundled_embeddings
from .infotext import infotext_name, parse_hashes
from .tags import LoraTag, TagError, parse_tag

if TYPE_CHECKING:
    from collections.abc import Callable

    from modules.options import Options
    from modules.sd_model_types import LoadedModel


log = logging.getLogger(__name__)

@dataclass
class LoraStepState:
    """Per-generation schedule state, kept in the generation's `GenerationState` (`p.generation_state`)."""

    tags: list[LoraTag]
    is_hr: bool
    blocks: BlockLayout
    presets: dict[str, list[float]]
    method: str = peft_method.METHOD_NATIVE
    applied: tuple = ()
    history: list[tuple[int, dict[str, tuple[float, float]], int]] = field(default_factory=list)


class ExtraNetworkLora(ExtraNetwork):
    """The handler registered as `lora` (and `lyco`)."""

    name = "lora"

    def __init__(self, engine: LoraEngine, options: Options, current_model: Callable[[], LoadedModel | None],
                 embeddings: EmbeddingDatabase | None = None) -> None:
        self.engine = engine
        self.options = options
        self.current_model = current_model  # callable returning the loaded model (or None)
        self.embeddings = embeddings  # bundled embeddings are registered here while their LoRA is active

    def activate(self, p: GenerationRequest, params_list: list[ExtraNetworkParams]) -> None:
        """Apply the prompt's LoRAs at the pass's first step; scheduled ones are re-applied by `on_step`."""
        is_hr = bool(getattr(p, "is_hr_pass", False))
        model = getattr(p, "sd_model", None) or self.current_model()
        if model is None:
            return
        if self.engine.model is not model:
            self.engine.set_model(model)
        presets = self.user_presets()
        blocks = BlockLayout.of_model(model)
        tags: list[LoraTag] = []
        requests: list[NetworkRequest] = []
        for params in params_list:
            try:
                tag = parse_tag(params)
                requests.append(tag.request(blocks, 0, self._pass_steps(p, is_hr), is_hr, presets))
                tags.append(tag)
            except TagError as exc:
                log.warning("%s", exc)
                add_comment(p, str(exc))
                continue
            for notice in tag.notices(blocks):
                log.info("%s", notice)
                add_comment(p, notice)
        method = self.method()
        try:
            report = self.engine.activate(requests, method=method)
        except EngineStartError as exc:  # logged once when it happened; each generation with LoRAs says why
            if params_list:
                add_comment(p, str(exc))
            return
        active_names = {a.request.name for a in report.active}
        # Only tags that loaded take part in step re-application (no rescans or error repeats per step).
        p.generation_state.put(LoraStepState([t for t in tags if t.name in active_names], is_hr, blocks,
                                             presets, method))
        if self.embeddings is not None:
            for message in sync_bundled_embeddings(self.embeddings, report.active, model.text_encoders):
                add_comment(p, f"Lora: {message}")
        self._report(p, report, is_hr)

    @staticmethod
    def _pass_steps(p: GenerationRequest, is_hr: bool) -> int:
        steps = int(getattr(p, "steps", 1) or 1)
        return int(getattr(p, "hr_second_pass_steps", 0) or steps) if is_hr else steps

    def method(self) -> str:
        """The engine method ("native" / "diffusers") the `lora_method` setting asks for."""
        try:
            return peft_method.method_from_option(self.options.get("lora_method"))
        except KeyError:
            return peft_method.METHOD_NATIVE

    def user_presets(self) -> dict[str, list[float]]:
        """lora-block-weight presets from the `lora_lbw_presets` option (`NAME:v1,v2,...` per line)."""
        try:
            return block_weights.parse_presets(str(self.options.get("lora_lbw_presets") or ""))
        except KeyError:
            return {}

    def on_step(self, p: GenerationRequest, step: int, total: int) -> None:
        """`process_step` callback: re-apply scheduled LoRAs when their weights change at this step. Only layers
        whose multiplier changed are rewritten; when a text-encoder layer changed, `conditioning_stale` asks the
        sampler to encode the prompts again."""
        state = p.generation_state.get(LoraStepState)
        if state is None or not any(tag.is_scheduled for tag in state.tags):
            return
        requests = [tag.request(state.blocks, step, total, state.is_hr, state.presets) for tag in state.tags]
        key = tuple((r.name, r.te_multiplier, r.unet_multiplier) for r in requests)
        if key == state.applied:
            return
        report = self.engine.activate(requests, method=state.method)
        state.applied = key
        state.history.append((step, {a.request.name: (a.request.te_multiplier, a.request.unet_multiplier)
                                     for a in report.active}, report.stats.layers_touched))
        if any(name.startswith("text_encoders.") for name in report.stats.touched):
            p.generation_state.conditioning_stale = True

    def _report(self, p: GenerationRequest, report: ActivationReport, is_hr: bool) -> None:
        missing = []
        for name in report.not_found:  # a file that exists but was skipped by the scan: say why, not "not found"
            reason = self.engine.registry.skipped_reason(name) or self.engine.registry.ambiguity_message(name)
            if reason is None:
                missing.append(name)
            else:
                add_comment(p, f"Lora {name} not applied: {reason}")
        for name in dict.fromkeys(a.request.name for a in report.active):  # which of several same-named files
            notice = self.engine.registry.ambiguity_message(name)
            if notice is not None:
                add_comment(p, f"Lora {notice}")
        if missing:
            add_comment(p, "Lora not found: " + ", ".join(missing))
        for name, message in report.errors.items():
            add_comment(p, f"Lora {name} not applied: {message}" if not message.startswith(name) else message)
        for line in dict.fromkeys(report.warnings):
            add_comment(p, f"Lora {line}")
        self._write_method(p, report, is_hr)
        if not self.options.get("lora_add_hashes_to_infotext"):
            return
        params = getattr(p, "extra_generation_params", None)
        if params is None:
            return
        hashes: dict[str, str] = {}
        if is_hr:
            hashes.update(parse_hashes(params.get("Lora hashes", "")))
        for active in report.active:
            shorthash = active.network.on_disk.shorthash
            if shorthash:
                hashes[infotext_name(active.request.name)] = shorthash
        if hashes:
            params["Lora hashes"] = ", ".join(f"{name}: {value}" for name, value in hashes.items())
        else:
            params.pop("Lora hashes", None)

    def _write_method(self, p: GenerationRequest, report: ActivationReport, is_hr: bool) -> None:
        """`Lora method` in the infotext (format in `peft_method`'s docstring); the hires pass keeps the first's."""
        params = getattr(p, "extra_generation_params", None)
        if params is None:
            return
        state = p.generation_state.get(LoraStepState)
        method = state.method if state is not None else self.method()
        used = [(infotext_name(a.request.name), a.method) for a in report.active]
        value = peft_method.infotext_value(method, used, params.get(peft_method.INFOTEXT_KEY) if is_hr else None)
        if value is None:
            params.pop(peft_method.INFOTEXT_KEY, None)
        else:
            params[peft_method.INFOTEXT_KEY] = value

    def deactivate(self, p: GenerationRequest) -> None:
        """Weights stay merged after the generation (the next one with the same set touches nothing)."""
