"""Prompt styles: `styles.csv` in the data folder, in A1111's format (columns `name,prompt,negative_prompt`).

A style's text is merged into a prompt as A1111 does: a style holding `{prompt}` has the prompt put in its place;
any other style is appended after a comma (`prompt, style`). Requests name styles in their `styles` list; the
processing applies them to every prompt, negative prompt and hires prompt of the request before anything else, so
the infotext records the merged prompts (A1111 behaviour). Pasting an infotext reverses this: the style texts found
at the ends of the prompts are removed and the styles listed under `Styles array` (the `infotext_styles` option).

A malformed file never loses the other styles: rows without a name, rows the CSV reader cannot parse and
duplicate names are skipped, each with a warning (`StyleDatabase.warnings`, also logged). A file without a `name`
column loads nothing and says so. Unknown names in a request are skipped with a comment under the image.
"""

from __future__ import annotations

import csv
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROMPT_PLACEHOLDER = "{prompt}"
INFOTEXT_STYLES_MODES = ("Ignore", "Apply", "Discard", "Apply if any")


@dataclass(frozen=True)
class PromptStyle:
    """One row of styles.csv."""

    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_prompt(style_text: str, prompt: str) -> str:
    """`style_text` applied to `prompt`: `{prompt}` replaced by the prompt, else `prompt, style_text` (empty parts
    left out)."""
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, styles: list[str]) -> str:
    """`prompt` with each style text merged in, in order."""
    for text in styles:
        prompt = merge_prompt(text, prompt)
    return prompt


def _strip_style_text(style_text: str, prompt: str) -> str | None:
    """The prompt before `style_text` was merged into it, or None when it does not end (or start/end, for a
    `{prompt}` style) the way the merge leaves it."""
    prompt, style_text = prompt.strip(), style_text.strip()
    if PROMPT_PLACEHOLDER in style_text:
        left, _, right = style_text.partition(PROMPT_PLACEHOLDER)
        if prompt.startswith(left) and prompt.endswith(right) and len(prompt) >= len(left) + len(right):
            return prompt[len(left):len(prompt) - len(right)]
        return None
    if not prompt.endswith(style_text):
        return None
    rest = prompt[:len(prompt) - len(style_text)]
    return rest[:-2] if rest.endswith(", ") else rest


class StyleDatabase:
    """The styles of one `styles.csv` (thread-safe; `reload()` reads the file again)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.styles: dict[str, PromptStyle] = {}
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.reload()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def reload_if_changed(self) -> None:
        """Read the file again when its modification time or size changed (or it appeared or went away)."""
        if self._file_stamp() != self._stamp:
            self.reload()

    def reload(self) -> list[str]:
        """Read the file again; returns the warnings (also kept in `warnings`). A missing file means no styles."""
        self._stamp = self._file_stamp()
        styles, warnings = read_styles_csv(self.path)
        for message in warnings:
            log.warning("%s", message)
        with self._lock:
            self.styles, self.warnings = styles, warnings
        return warnings

    def names(self) -> list[str]:
        with self._lock:
            return list(self.styles)

    def get(self, name: str) -> PromptStyle | None:
        with self._lock:
            return self.styles.get(name)

    def known(self, names: list[str]) -> tuple[list[PromptStyle], list[str]]:
        """(the styles found, the names not found) for a request's `styles` list."""
        found, missing = [], []
        for name in names:
            style = self.get(name)
            if style is None:
                missing.append(name)
            else:
                found.append(style)
        return found, missing

    def apply_to_prompt(self, prompt: str, names: list[str]) -> str:
        found, _ = self.known(names)
        return apply_styles(prompt, [s.prompt for s in found])

    def apply_to_negative_prompt(self, prompt: str, names: list[str]) -> str:
        found, _ = self.known(names)
        return apply_styles(prompt, [s.negative_prompt for s in found])

    def extract_from_prompts(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """(style names, prompt, negative prompt) with the texts of every style found at the prompts' ends removed
        (the styles in the order they were applied), as A1111's `extract_styles_from_prompt`."""
        with self._lock:
            candidates = [s for s in self.styles.values() if s.prompt or s.negative_prompt]
        found: list[str] = []
        while True:
            for style in candidates:
                positive = _strip_style_text(style.prompt, prompt)
                negative = _strip_style_text(style.negative_prompt, negative_prompt) if positive is not None else None
                if positive is not None and negative is not None:
                    prompt, negative_prompt = positive, negative
                    candidates.remove(style)
                    found.append(style.name)
                    break
            else:
                break
        return list(reversed(found)), prompt, negative_prompt

    def as_api_items(self) -> list[dict[str, Any]]:
        """`GET /sdapi/v1/prompt-styles` entries (A1111's shape: name, prompt, negative_prompt)."""
        with self._lock:
            return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                    for s in self.styles.values()]


def read_styles_csv(path: Path) -> tuple[dict[str, PromptStyle], list[str]]:
    """(styles by name, warnings) of an A1111 styles.csv; see the module docstring for what is skipped."""
    if not path.is_file():
        return {}, []
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="replace")
    except OSError as exc:
        return {}, [f"{path}: cannot read the styles file ({exc}); no styles loaded"]
    warnings: list[str] = []
    if "\0" in text:
        warnings.append(f"{path}: the file holds NUL bytes; they were dropped")
        text = text.replace("\0", "")
    lines = text.splitlines(keepends=True)
    try:
        header = [column.strip().lower() for column in next(csv.reader(lines[:1], skipinitialspace=True))]
    except StopIteration:
        return {}, warnings
    except csv.Error as exc:
        return {}, [*warnings, f"{path}: unreadable header line ({exc}); no styles loaded"]
    if "name" not in header:
        return {}, [*warnings, f"{path}: no 'name' column in the header {header!r}; no styles loaded"]
    columns = {name: header.index(name) for name in ("name", "prompt", "negative_prompt") if name in header}
    styles: dict[str, PromptStyle] = {}
    start = 1  # index of the first line the current reader reads
    while start < len(lines):
        reader = csv.reader(lines[start:], skipinitialspace=True, strict=True)
        before = 0
        try:
            for row in reader:
                line = start + before + 1  # 1-based number of the row's first line
                before = reader.line_num
                _add_row(styles, warnings, row, columns, f"{path}, line {line}")
            break
        except csv.Error as exc:  # skip the broken row's first line and read on from the next one
            warnings.append(f"{path}, line {start + before + 1}: malformed CSV row skipped ({exc})")
            start += before + 1
    return styles, warnings


def _add_row(styles: dict[str, PromptStyle], warnings: list[str], row: list[str], columns: dict[str, int],
             where: str) -> None:
    if not row or all(not cell.strip() for cell in row):
        return
    values = {key: row[index] if index < len(row) else "" for key, index in columns.items()}
    name = values["name"].strip()
    if not name:
        warnings.append(f"{where}: row without a style name skipped")
    elif name in styles:
        warnings.append(f"{where}: duplicate style {name!r} skipped (the first one is kept)")
    else:
        styles[name] = PromptStyle(name, values.get("prompt", ""), values.get("negative_prompt", ""))


def infotext_pasted_styles(database: StyleDatabase, mode: str, params: dict[str, Any]) -> None:
    """A1111's `infotext_styles` handling of parsed infotext `params` (changed in place): unless `mode` is Ignore,
    style texts are removed from `Prompt`/`Negative prompt` (and the hires prompts when they match) and, for Apply
    (always) or Apply if any (when styles were found), `Styles array` lists the styles."""
    if mode == "Ignore" or mode not in INFOTEXT_STYLES_MODES:
        return
    prompt, negative = str(params.get("Prompt", "")), str(params.get("Negative prompt", ""))
    found, new_prompt, new_negative = database.extract_from_prompts(prompt, negative)
    if found:
        if params.get("Hires prompt") == prompt:
            params["Hires prompt"] = new_prompt
        if params.get("Hires negative prompt") == negative:
            params["Hires negative prompt"] = new_negative
        params["Prompt"], params["Negative prompt"] = new_prompt, new_negative
    if mode == "Apply" or (mode == "Apply if any" and found):
        params["Styles array"] = found
