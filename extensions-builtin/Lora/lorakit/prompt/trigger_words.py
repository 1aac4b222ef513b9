"""Trigger words added automatically (SD.Next's auto-apply): for every LoRA in a prompt, its activation text (from the
sidecar, else the trigger words of its Civitai / modelspec data) or its top N training tags are put into the prompt,
at `_tags_` when the prompt has that placeholder, else at the end. Words already in the prompt are not added twice, so a pasted infotext (which records the final prompt)
reproduces the same prompt.

Modes (option `lora_auto_trigger`): "Off"; "Activation text" (falls back to the top tags when a LoRA has none);
"Top training tags".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modules.extra_networks import parse_prompt

from ..library.registry import NetworkOnDisk, training_tags

PLACEHOLDER = "_tags_"
MODES = ("Off", "Activation text", "Top training tags")


def words_for(entry: NetworkOnDisk, mode: str, top_n: int) -> list[str]:
    """The words one LoRA contributes in `mode`."""
    if mode == "Activation text":
        text = entry.activation_text  # the sidecar's, else the model page's trigger words (Civitai, modelspec)
        if text:
            return [text]
    if mode in ("Activation text", "Top training tags"):
        return [tag for tag, _ in training_tags(entry.metadata)[:top_n]]
    return []


def add_trigger_words(prompt: str, find: Callable[[str], NetworkOnDisk | None], mode: str, top_n: int) -> str:
    """`prompt` with the trigger words of its LoRAs added (see the module docstring)."""
    if mode == "Off":
        return prompt
    _, data = parse_prompt(prompt)
    words: list[str] = []
    lowered = prompt.lower()
    for params in data.get("lora", []) + data.get("lyco", []):
        entry = find(params.positional[0]) if params.positional else None
        if entry is None:
            continue
        for word in words_for(entry, mode, top_n):
            if word.lower() not in lowered and word not in words:
                words.append(word)
    text = ", ".join(words)
    if PLACEHOLDER in prompt:
        return prompt.replace(PLACEHOLDER, text, 1)
    return f"{prompt}, {text}" if text else prompt


def apply_to_processing(p: Any, find: Callable[[str], NetworkOnDisk | None], mode: str, top_n: int) -> None:
    """`before_process` step: rewrite the first-pass and hires prompts of every image; records the mode."""
    if mode == "Off":
        return
    for attribute in ("all_prompts", "all_hr_prompts"):
        prompts = getattr(p, attribute, None)
        if prompts:
            setattr(p, attribute, [add_trigger_words(text, find, mode, top_n) for text in prompts])
    if getattr(p, "extra_generation_params", None) is not None:
        p.extra_generation_params["Lora trigger words"] = mode
