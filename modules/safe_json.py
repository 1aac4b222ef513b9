"""The one JSON reader for everything that comes from a file (safetensors headers and metadata, sidecars, cache.json,
config.json, Civitai-style `.info`/`.json` files): size is checked before parsing, nesting depth right after, and
every way Python's `json` can fail is turned into one `JsonError` with a message saying what is wrong.

Why: `json.loads` raises more than `JSONDecodeError` on hostile input. An integer of more than 4,300 digits raises
ValueError (Python's int digit limit), ~1,000 levels of nesting raise RecursionError, `1e999` parses to `inf` and
`Infinity`/`NaN` are accepted (later `int(inf)` raises OverflowError), and `"\\ud800"` gives a lone surrogate that
breaks every UTF-8 response later. Decisions:
* depth is limited to `MAX_DEPTH` (the C parser's own recursion guard stops ~1,000 levels, the RecursionError is
  caught; the parsed value's depth is then counted without recursion, so nothing deeper is ever cached or returned);
* integers are limited to `MAX_INT_DIGITS` digits and floats must be finite; `NaN`/`Infinity` are refused
  (they are not JSON, and our writers never write them);
* lone surrogates in strings are replaced by U+FFFD unless `keep_surrogates=True` (cache.json keys that are file
  names undecodable as UTF-8, which `atomic_io.write_json_atomic` writes as escapes);
* `dumps` refuses NaN/Infinity too, so no file we write holds non-standard JSON.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from typing import Any

from modules.regular_files import read_regular

MAX_JSON_BYTES = 100 * 1024 * 1024
MAX_DEPTH = 64
MAX_INT_DIGITS = 400  # far beyond any real count or seed (a 64-bit int has 20 digits)

_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class JsonError(ValueError):
    """Text that is not acceptable JSON; the message says why (callers add the file name)."""


def nesting_depth(value: Any, limit: int | None = None) -> int:
    """The nesting depth of parsed JSON `value` (a scalar is 0, `[]` is 1), counted without recursion; with `limit`,
    the count stops as soon as it is exceeded (returns limit + 1)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if limit is not None and deepest > limit:
                return deepest
        stack.extend((child, depth) for child in item if isinstance(child, (dict, list)))
    return deepest


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise JsonError(f"holds an integer of {digits} digits (limit {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_INT_DIGITS:
        raise JsonError(f"holds a number of {len(text)} characters (limit {MAX_INT_DIGITS})")
    value = float(text)
    if not math.isfinite(value):
        raise JsonError(f"holds the number {text[:40]}, which is too large for a float")
    return value


def _parse_constant(name: str) -> Any:
    raise JsonError(f"holds {name}, which is not JSON")


def clean_surrogates(value: Any) -> Any:
    """`value` with lone surrogates in every string (keys too) replaced by U+FFFD."""
    if isinstance(value, str):
        if _SURROGATE_RE.search(value) is None:
            return value
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [clean_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {clean_surrogates(k): clean_surrogates(v) for k, v in value.items()}
    return value


def loads(data: str | bytes, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH,
          keep_surrogates: bool = False) -> Any:
    """Parse JSON `data` (bytes are UTF-8) under the limits in the module docstring; JsonError for anything wrong."""
    if len(data) > max_bytes:
        raise JsonError(f"is {len(data)} bytes of JSON (limit {max_bytes})")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
    except UnicodeDecodeError as exc:
        raise JsonError(f"is not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except JsonError:
        raise
    except RecursionError:  # the C parser's own guard, around 1,000 levels
        raise JsonError(f"nests JSON more than {sys.getrecursionlimit()} levels deep (limit {max_depth})") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno})") from None
    except (ValueError, OverflowError, UnicodeError, TypeError) as exc:
        raise JsonError(f"is not acceptable JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    depth = nesting_depth(value, max_depth)
    if depth > max_depth:
        raise JsonError(f"nests JSON more than {max_depth} levels deep")
    return value if keep_surrogates else clean_surrogates(value)


def read_file(path: str | os.PathLike[str], default: Any = None, max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_DEPTH, keep_surrogates: bool = False) -> Any:
    """Read a JSON file (regular files only: `regular_files.read_regular`); `default` when it does not exist.
    A bad file raises JsonError naming the file; a FIFO, device or folder raises `NotRegularFileError` (OSError)."""
    try:
        data = read_regular(path, max_bytes)
    except FileNotFoundError:
        return default
    try:
        return loads(data, max_bytes, max_depth, keep_surrogates)
    except JsonError as exc:
        raise JsonError(f"{path}: {exc}") from None


def sendable(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of JSON-like `value` that any JSON response can carry: non-finite floats as their text ("nan", "inf"),
    lone surrogates replaced, keys as text, anything nested deeper than `max_depth` as the text "...". Used by the
    error handler, which must answer whatever body it was sent."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return clean_surrogates(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if max_depth <= 0:
        return "..."
    if isinstance(value, dict):
        return {clean_surrogates(str(k)): sendable(v, max_depth - 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sendable(item, max_depth - 1) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value[:10_000]).decode("utf-8", "replace")
    return clean_surrogates(str(value))


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` that refuses NaN/Infinity (ValueError) instead of writing non-standard JSON."""
    return json.dumps(value, allow_nan=False, **kwargs)
