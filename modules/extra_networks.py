"""The extra-networks framework: `<type:arg:arg...>` tags in prompts, routed to registered handlers.

Grammar (A1111's): the regex `<(\\w+):([^>]+)>` finds tags; the argument string is split on `:`; an item with
exactly one `=` is a named argument (`key=value`), any other item is positional. Tags are removed from the
prompt text. Unknown types are removed too and logged.

Lifecycle per batch: `ExtraNetworkRegistry.activate(p, data)` calls each mentioned handler with its list of
`ExtraNetworkParams` and every other registered handler with `[]` (this is how a LoRA gets unloaded when its
tag leaves the prompt). A handler that raises is reported in `p.comments` and does not stop the others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"<(\w+):([^>]+)>")


@dataclass
class ExtraNetworkParams:
    """One tag's arguments: `items` as written, split into `positional` and `named`."""

    items: list[str] = field(default_factory=list)
    positional: list[str] = field(default_factory=list)
    named: dict[str, str] = field(default_factory=dict)
    text: str = ""  # the whole tag as written, for error messages

    @classmethod
    def from_items(cls, items: list[str], text: str = "") -> ExtraNetworkParams:
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in items:
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0].strip()] = parts[1]
            else:
                positional.append(item)
        return cls(items=list(items), positional=positional, named=named, text=text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ExtraNetworkParams) and self.items == other.items

    def __hash__(self) -> int:
        return hash(tuple(self.items))


ExtraNetworkData = dict[str, list[ExtraNetworkParams]]


def parse_prompt(prompt: str) -> tuple[str, ExtraNetworkData]:
    """Remove every `<type:args>` tag from `prompt`; return the cleaned prompt and the tags by type."""
    data: ExtraNetworkData = {}

    def found(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2)
        data.setdefault(kind, []).append(ExtraNetworkParams.from_items(args.split(":"), text=match.group(0)))
        return ""

    return TAG_RE.sub(found, prompt), data


def parse_prompts(prompts: Iterable[str]) -> tuple[list[str], ExtraNetworkData]:
    """Clean every prompt; the tags of the first prompt are the ones used for the whole batch (as in A1111)."""
    cleaned: list[str] = []
    first: ExtraNetworkData | None = None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        cleaned.append(text)
        if first is None:
            first = data
    return cleaned, first or {}


class ProcessingLike(Protocol):
    """What a handler may use of the processing object."""

    comments: list[str]
    extra_generation_params: dict[str, Any]


class ExtraNetwork:
    """Base class of a handler. Subclasses set `name` and implement `activate`/`deactivate`."""

    name: str = ""

    def activate(self, p: Any, params_list: list[ExtraNetworkParams]) -> None:
        """Make exactly the networks in `params_list` active (an empty list deactivates all of this type)."""
        raise NotImplementedError

    def deactivate(self, p: Any) -> None:
        """Called once after the generation (A1111 semantics: weights may stay applied)."""


def add_comment(p: Any, text: str) -> None:
    """Append a comment shown under the generation (kept unique, in order)."""
    comments = getattr(p, "comments", None)
    if comments is None:
        return
    if text not in comments:
        comments.append(text)


class ExtraNetworkRegistry:
    """Handlers by type name, with aliases (`lyco` -> the `lora` handler)."""

    def __init__(self) -> None:
        self.handlers: dict[str, ExtraNetwork] = {}
        self.aliases: dict[str, str] = {}

    def register(self, handler: ExtraNetwork, aliases: Iterable[str] = ()) -> None:
        self.handlers[handler.name] = handler
        for alias in aliases:
            self.aliases[alias] = handler.name

    def unregister(self, name: str) -> None:
        self.handlers.pop(name, None)
        self.aliases = {k: v for k, v in self.aliases.items() if v != name}

    def resolve(self, kind: str) -> str | None:
        if kind in self.handlers:
            return kind
        return self.aliases.get(kind)

    def group(self, data: ExtraNetworkData) -> dict[str, list[ExtraNetworkParams]]:
        """Merge aliased types into their handler's list (prompt order kept); unknown types are logged and dropped."""
        grouped: dict[str, list[ExtraNetworkParams]] = {}
        for kind, params in data.items():
            name = self.resolve(kind)
            if name is None:
                log.info("Skipping unknown extra network: %s", kind)
                continue
            grouped.setdefault(name, []).extend(params)
        return grouped

    def activate(self, p: Any, data: ExtraNetworkData) -> None:
        """Activate every handler: mentioned ones with their params, the rest with an empty list."""
        grouped = self.group(data)
        for name, handler in self.handlers.items():
            try:
                handler.activate(p, grouped.get(name, []))
            except Exception as exc:
                log.exception("activating extra network %s failed", name)
                add_comment(p, f"Extra network {name} failed: {exc}")

    def deactivate(self, p: Any, data: ExtraNetworkData) -> None:
        for name, handler in self.handlers.items():
            try:
                handler.deactivate(p)
            except Exception as exc:
                log.exception("deactivating extra network %s failed", name)
                add_comment(p, f"Extra network {name} failed to deactivate: {exc}")
