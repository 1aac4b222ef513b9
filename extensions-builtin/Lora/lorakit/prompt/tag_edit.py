"""Rewriting one `<lora:...>` tag of a prompt: what the X/Y/Z plot's LoRA axes (and the Lora card's "compare"
action) change from cell to cell.

`edit_tag(prompt, target, change)` finds the tag of LoRA `target` (the first `lora`/`lyco` tag when `target` is None),
lets `change` edit its positional and named arguments, and writes the tag back in place (the rest of the prompt is
untouched, so only the one LoRA's request changes and the patcher rewrites only its layers). A prompt without such a
tag gets `<lora:target:1>` appended first. Each result is checked with the tag parser (`tags.parse_tag`), so a value
the engine would refuse raises `TagError` naming the tag before anything is generated.

Changes (`TagChange`): `weight` (both parts, A1111's `<lora:name:w>`: drops positional te/unet and named te=/unet=),
`te`/`unet` (named `te=`/`unet=`), `lbw` (named, replaces the `w=` alias), `start`/`stop` (named), `name` (swap the
file, keep every argument).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from modules.extra_networks import TAG_RE, ExtraNetworkParams

from .tags import TagError, parse_tag

LORA_KINDS = ("lora", "lyco")
CHANGES = ("weight", "te", "unet", "lbw", "start", "stop", "name")


@dataclass
class TagArgs:
    """A tag's arguments as edited: the kind (`lora`/`lyco`), positional items (name first), named ones in order."""

    kind: str
    positional: list[str]
    named: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.positional[0] if self.positional else ""

    def text(self) -> str:
        """The tag written back: `<kind:positional...:key=value...>`."""
        items = [*self.positional, *(f"{key}={value}" for key, value in self.named.items())]
        return f"<{self.kind}:{':'.join(items)}>"


def format_number(value: float) -> str:
    """A weight as a tag writes it: `0.25`, `1`, `-0.5` (no float noise such as 0.30000000000000004)."""
    rounded = round(float(value), 6)
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


def apply_change(args: TagArgs, change: str, value: str | float) -> None:
    """Edit `args` in place for one change (see the module docstring)."""
    text = format_number(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)
    if change == "weight":
        args.positional = [args.name, text, *args.positional[3:4]]  # keep a positional dyn (4th item)
        if len(args.positional) == 3:
            args.positional.insert(2, text)  # name:w:w:dyn, so the dyn stays fourth
        args.named.pop("te", None)
        args.named.pop("unet", None)
    elif change in ("te", "unet", "start", "stop"):
        args.named[change] = text
    elif change == "lbw":
        args.named.pop("w", None)
        args.named["lbw"] = text
    elif change == "name":
        args.positional = [text, *args.positional[1:]]
    else:
        raise ValueError(f"unknown tag change {change!r}; known: {', '.join(CHANGES)}")


def find_tags(prompt: str) -> list[tuple[int, int, TagArgs]]:
    """(start, end, arguments) of every lora/lyco tag in `prompt`, in order."""
    found = []
    for match in TAG_RE.finditer(prompt):
        if match.group(1) not in LORA_KINDS:
            continue
        params = ExtraNetworkParams.from_items(match.group(2).split(":"), text=match.group(0))
        found.append((match.start(), match.end(), TagArgs(match.group(1), list(params.positional), dict(params.named))))
    return found


def tag_names(prompt: str) -> list[str]:
    """The LoRA names the prompt's tags mention, in order."""
    return [args.name for _, _, args in find_tags(prompt)]


def edit_tag(prompt: str, target: str | None, change: Callable[[TagArgs], None]) -> str:
    """`prompt` with the tag of `target` (None: the first LoRA tag) edited by `change`; see the module docstring.
    Raises TagError when there is no tag to edit and no `target` to add, or when the edited tag is invalid."""
    tags = find_tags(prompt)
    chosen = next(((s, e, a) for s, e, a in tags if target is None or a.name == target), None)
    if chosen is None:
        if not target:
            raise TagError("the prompt has no <lora:...> tag to change; name the LoRA in the axis values "
                           "(e.g. \"my_lora: 0, 0.5, 1\")")
        separator = "" if not prompt or prompt.endswith((" ", ",", "\n")) else " "
        prompt = f"{prompt}{separator}<lora:{target}:1>"
        chosen = find_tags(prompt)[-1]
    start, end, args = chosen
    change(args)
    written = args.text()
    parse_tag(ExtraNetworkParams.from_items(written[len(args.kind) + 2:-1].split(":"), text=written))
    return prompt[:start] + written + prompt[end:]


def set_tag_value(prompt: str, target: str | None, change: str, value: str | float) -> str:
    """`prompt` with one change (`weight`, `te`, `unet`, `lbw`, `start`, `stop`, `name`) made to `target`'s tag."""
    return edit_tag(prompt, target, lambda args: apply_change(args, change, value))
