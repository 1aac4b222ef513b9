"""Wires the Lora extension into the host: options, the registry and engine, the `lora`/`lyco` extra network,
infotext pasting by hash, and the model-loaded hook. The engine is published for other extensions
(`webui.services.get("lora", LoraEngine)`) and bound to the A1111 facade modules (`lorakit.a1111`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lorakit import a1111
from lorakit.engine import peft_method
from lorakit.engine.engine import LoraEngine
from lorakit.library.registry import NetworkRegistry
from lorakit.prompt import extra_network, trigger_words
from lorakit.prompt.infotext import rewrite_names_by_hash
from lorakit.web import api, cards, tools_tab

if TYPE_CHECKING:
    from modules.host import WebUI
    from modules.options import Options

log = logging.getLogger(__name__)


def register_options(options: Options) -> None:
    """The extension's options (Settings -> Extra Networks), with A1111's keys where A1111 has them."""
    section = "Extra Networks"
    options.add("lora_preferred_name", "Alias from file", "When adding to prompt, refer to Lora by", section,
                choices=["Alias from file", "Filename"])
    options.add("lora_add_hashes_to_infotext", True, "Add Lora hashes to infotext", section)
    options.add("lora_show_all", False, "Always show all networks on the Lora page", section)
    options.add("lora_hide_unknown_for_versions", [], "Hide networks of unknown versions for model versions", section)
    options.add("lora_in_memory_limit", 8, "Number of Lora networks to keep cached in memory", section, minimum=0)
    options.add("extra_networks_default_multiplier", 1.0, "Default multiplier for extra networks", section)
    options.add("lora_auto_trigger", "Off", "Add LoRA trigger words to the prompt automatically (at _tags_, else at "
                "the end)", section, choices=list(trigger_words.MODES))
    options.add("lora_auto_trigger_tags", 3, "Number of top training tags for trigger words", section, minimum=1,
                maximum=50)
    options.add("lora_lbw_presets", "", "Block-weight presets for lbw= (one NAME:v1,v2,... per line, "
                "lora-block-weight's lbwpresets.txt format)", section)
    options.add("lora_method", peft_method.OPTION_DEFAULT, "LoRA method", section,
                choices=list(peft_method.OPTION_CHOICES), infotext=peft_method.INFOTEXT_KEY,
                comment=method_comment())


def method_comment() -> str:
    """The `lora_method` setting's comment; it says why the diffusers method is unavailable when it is."""
    comment = ("native merge: deltas merged into the weights (every feature, no cost per step); diffusers: "
               "diffusers/PEFT adapters added in the forward pass (block weights, dyn=, schedules and "
               "LyCORIS algorithms other than LoRA/LoCon still use native merge)")
    unavailable = peft_method.unavailable_reason()
    if unavailable is not None:
        comment += f". diffusers is unavailable: {unavailable}; LoRAs use native merge"
    return comment


def setup(webui: WebUI) -> None:
    """Called by the extension loader with the WebUI object."""
    register_options(webui.options)
    roots = [webui.paths.lora_dir, webui.paths.lyco_dir]
    registry = NetworkRegistry(roots, webui.cache, hashing=not webui.args.no_hashing)
    if not webui.args.no_embedded_default:
        from lorakit.library import demo_loras  # noqa: PLC0415

        demo_loras.ensure_demo_loras(webui.paths.lora_dir)
    with webui.startup.phase("LoRA scan", f"scanning LoRA folders {', '.join(map(str, roots))}") as phase:
        registry.refresh()
        phase.label = f"LoRA scan, {len(registry.entries())} files"
    log.info("found %d LoRAs", len(registry.entries()))
    engine = LoraEngine(registry, memory_limit=int(webui.options.get("lora_in_memory_limit")))
    webui.options.infos["lora_in_memory_limit"].onchange = lambda value: setattr(engine, "memory_limit", int(value))
    webui.services.publish("lora", engine)
    a1111.VIEW.bind(engine)  # the A1111 facade modules (networks, network, lora) read this engine
    handler = extra_network.ExtraNetworkLora(engine, webui.options, lambda: webui.models.current,
                                                   embeddings=webui.embeddings)
    webui.extra_networks.register(handler, aliases=["lyco"])
    webui.callbacks.add("process_step", handler.on_step)
    webui.callbacks.add("before_process", lambda p: trigger_words.apply_to_processing(
        p, registry.find, webui.options.get("lora_auto_trigger"), int(webui.options.get("lora_auto_trigger_tags"))))
    webui.callbacks.add("model_loaded", engine.set_model)
    if webui.models is not None and webui.models.current is not None:
        engine.set_model(webui.models.current)

    def infotext_pasted(infotext: str, params: dict[str, Any]) -> None:
        hashes = params.get("Lora hashes")
        # `Lora method` becomes the `lora_method` option's value, which the host turns into an override setting
        # (OptionInfo.infotext); LoRAs without a recorded method were merged natively (as A1111 does).
        method = peft_method.option_from_infotext(params.get(peft_method.INFOTEXT_KEY))
        if method is None and hashes:
            method = peft_method.OPTION_DEFAULT
        if method is not None:
            params[peft_method.INFOTEXT_KEY] = method
        if not hashes:
            return
        for key in ("Prompt", "Hires prompt"):
            if key in params:
                params[key] = rewrite_names_by_hash(
                    params[key], hashes, registry.find_by_short_hash,
                    lambda entry: registry.prompt_name(entry, webui.options.get("lora_preferred_name")),
                )

    webui.callbacks.add("infotext_pasted", infotext_pasted)
    webui.callbacks.add("app_started", lambda webui_, app: api.mount(app, webui_, engine))
    cards.register_page(webui, engine)
    webui.callbacks.add("ui_tabs", tools_tab.create_tab)
