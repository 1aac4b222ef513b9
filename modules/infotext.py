"""Infotext: the A1111 `parameters` text stored in PNG files and returned by the API, written and parsed.

Format (three parts, the negative prompt line is left out when empty)::

    {prompt}
    Negative prompt: {negative prompt}
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, Size: 512x512, ...

Values holding `,`, `:` or a newline are written as JSON strings (`Lora hashes: "a: 0123456789ab"`), exactly
as A1111's `infotext_utils.quote` does, and `parse_generation_parameters` reads them back the way A1111 does
(including its defaults for missing keys, e.g. `Clip skip` = 1).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

VERSION = "lora-webui-1.0.0"
"""Written as `Version:` into every infotext (option `add_version_to_infotext`). Deliberately not of A1111's
`vX.Y.Z` form: A1111 reads a version below 1.6/1.7 as a reason to switch on old-behaviour compatibility options
when pasting, and a version it cannot parse as no reason at all."""

# One `key: value` pair of the last line; a value is a JSON string or anything up to the next comma.
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")

# Defaults A1111 fills in for keys an infotext does not mention (so pasting an old infotext resets them).
PARSE_DEFAULTS: dict[str, Any] = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}


def quote(value: Any) -> Any:
    """Return `value` unchanged unless its text holds `,`, `:` or a newline; then as a JSON string literal."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return value
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo `quote`: a `"..."` JSON string becomes its content; anything else is returned as is."""
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def format_value(value: Any) -> str:
    """Text of one value: floats that are whole numbers lose their `.0` (`CFG scale: 7`), the rest via `str`."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_params(params: Mapping[str, Any]) -> str:
    """The last infotext line: `k: v` pairs joined by `, `; None values are skipped; a value equal to its key
    is written as the bare key (A1111's flag style)."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        text = format_value(value)
        parts.append(key if key == text else f"{key}: {quote(text)}")
    return ", ".join(parts)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """The full infotext: prompt, optional `Negative prompt:` line, parameters line (outer whitespace stripped)."""
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{format_params(params)}".strip()


def prompt_uses_emphasis(text: str) -> bool:
    """True when the A1111 attention parser finds any weight other than 1 in `text` (BREAK not counted)."""
    from modules.prompt_encoding import parse_prompt_attention  # noqa: PLC0415 - avoids a torch import cycle

    return any(weight not in (1.0, -1.0) for _, weight in parse_prompt_attention(text))


def _restore_old_hires_fix_params(res: dict[str, Any]) -> None:
    """Infotexts from before A1111 1.0 wrote `First pass size`; convert it to Size + Hires resize."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    first_w, first_h = int(first_w), int(first_h)
    if first_w == 0 or first_h == 0:
        # A1111's old behaviour: the first pass was the size scaled to about 512x512 pixels, in multiples of 64.
        scale = (512 * 512 / (width * height)) ** 0.5
        first_w, first_h = int(-(-(width * scale) // 64) * 64), int(-(-(height * scale) // 64) * 64)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def get_override_settings(params: Mapping[str, Any], options: Any,
                          skip_fields: Any = ()) -> list[tuple[str, str, Any]]:
    """(infotext key, option key, value) for every option registered with an `infotext` key whose value in the
    parsed `params` is valid and differs from the option's current value (A1111's `get_override_settings`): what a
    pasted infotext sets for its generation only. Invalid values are skipped (logged)."""
    found = []
    for key, info in list(options.infos.items()):
        name = getattr(info, "infotext", "")
        if not name or name in skip_fields or params.get(name) is None:
            continue
        try:
            value = info.coerce(params[name])
        except ValueError as exc:
            log.info("infotext %s ignored: %s", name, exc)
            continue
        choices = info.current_choices()
        if choices is not None and info.kind != "list" and value not in choices:
            log.info("infotext %s=%r ignored: not one of %r", name, value, choices)
            continue
        if value != options.get(key):
            found.append((name, key, value))
    return found


def parse_generation_parameters(text: str, callbacks: Any = None) -> dict[str, Any]:
    """Parse an infotext into A1111's dict: `Prompt`, `Negative prompt`, every `key: value` of the last line
    (quoted values unquoted, `WxH` values split into `key-1`/`key-2`), plus A1111's defaults for missing keys.

    `callbacks` (a `modules.script_callbacks.Callbacks`) gets the `infotext_pasted(text, result)` event, which
    extensions use to rewrite the result (the Lora extension maps `Lora hashes` to local names).
    """
    res: dict[str, Any] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False

    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""

    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[len("Negative prompt:"):].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line

    for key, value in RE_PARAM.findall(lastline):
        if value and value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = RE_IMAGESIZE.match(value)
        if size is not None:
            res[f"{key}-1"] = size.group(1)
            res[f"{key}-2"] = size.group(2)
        else:
            res[key] = value

    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for key, default in PARSE_DEFAULTS.items():
        res.setdefault(key, default)
    if res["FP8 weight"] != "Disable":
        res.setdefault("Cache FP16 weight for LoRA", False)
    _restore_old_hires_fix_params(res)
    if "Emphasis" not in res and (prompt_uses_emphasis(prompt) or prompt_uses_emphasis(negative_prompt)):
        res["Emphasis"] = "Original"
    if callbacks is not None:
        callbacks.run("infotext_pasted", text, res)
    return res
