"""The `Lora hashes` infotext: how names are written into it, read back from it, and how a pasted prompt's
`<lora:NAME:` is rewritten to the local file with the recorded short hash (A1111's behaviour).

(`Lora method`, the other infotext field the extension writes, is documented and formatted with the method
choice in `engine.peft_method`.)
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..library.registry import NetworkOnDisk


def infotext_name(name: str) -> str:
    """The name as written into `Lora hashes` (A1111 removes `:` and `,`)."""
    return name.replace(":", "").replace(",", "")


def parse_hashes(text: str) -> dict[str, str]:
    """`"a: 0123, b: 4567"` -> {"a": "0123", "b": "4567"}; parts without `:` are ignored."""
    found: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, value = part.partition(":")
        if sep and name.strip():
            found[name.strip()] = value.strip()
    return found


def rewrite_names_by_hash(prompt: str, hashes_text: str,
                          find_by_short_hash: Callable[[str, str], NetworkOnDisk | None],
                          alias_of: Callable[[NetworkOnDisk], str]) -> str:
    """Replace `<lora:NAME:` whose NAME is in `Lora hashes` with the local file that has that short hash (A1111).
    `find_by_short_hash(shorthash, name)` gets the pasted name too (see `NetworkRegistry.find_by_short_hash`), and
    `alias_of` must give a name that reaches that file (`NetworkRegistry.prompt_name`)."""
    hashes = parse_hashes(hashes_text)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        shorthash = hashes.get(infotext_name(name))
        entry = find_by_short_hash(shorthash, name) if shorthash else None
        return f"<lora:{alias_of(entry)}:" if entry is not None else match.group(0)

    return re.sub(r"<lora:([^:>]+):", replace, prompt)
