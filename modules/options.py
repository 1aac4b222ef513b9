"""The options store: one `config.json`, options registered by the host and by extensions.

Each option has a key, a default, a label and a section (the Settings tab groups by section); `choices` and
`minimum`/`maximum` make the Settings tab show a dropdown or slider and make `set` validate. Keys found in
`config.json` that nobody registered are kept and written back unchanged (an extension that is not loaded
today keeps its settings). Writes are atomic; a `set`/`update` whose write fails (full disk, read-only folder)
raises the OSError naming config.json and leaves both the file and the values in memory as they were.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules import safe_json
from modules.atomic_io import read_json, write_json_atomic

log = logging.getLogger(__name__)
MAX_UNREGISTERED_DEPTH = 8  # values of keys nobody registered (an A1111 client's extension options)
MAX_UNREGISTERED_BYTES = 64 * 1024

MAX_LIST_ITEMS = 1000


@dataclass
class OptionInfo:
    """One registered option. `kind` is derived from the default's type unless given.

    `infotext`: the infotext key that records this option (A1111's `OptionInfo.infotext`); a pasted infotext holding
    that key brings the value back as an override setting (`modules.infotext.get_override_settings`).
    `validate`: a check after the type conversion (`coerce`): returns the value to store (it may normalise it) or
    raises ValueError with a message naming the bad part (e.g. the file paths of `forge_additional_modules`).
    """

    key: str
    default: Any
    label: str
    section: str = "General"
    choices: list[Any] | Callable[[], list[Any]] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    comment: str = ""
    onchange: Callable[[Any], None] | None = field(default=None, repr=False)
    infotext: str = ""
    validate: Callable[[Any], Any] | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        if isinstance(self.default, float):
            return "float"
        if isinstance(self.default, list):
            return "list"
        return "str"

    def current_choices(self) -> list[Any] | None:
        return self.choices() if callable(self.choices) else self.choices

    def coerce(self, value: Any) -> Any:
        """Convert `value` to this option's type, or raise ValueError with a message naming the option.

        By type: bool from a bool, 0/1 or the usual words; int from an int or an integral finite float; float finite
        only (no NaN/Infinity: config.json stays standard JSON); list items are scalars (text, finite numbers,
        bools) of the default's item type where it has items, at most `MAX_LIST_ITEMS`, never nested; str from a
        scalar (a dict or list is refused, not turned into its repr)."""
        try:
            if self.kind == "bool":
                if isinstance(value, str):
                    if value.lower() in ("true", "1", "yes", "on"):
                        return True
                    if value.lower() in ("false", "0", "no", "off"):
                        return False
                    raise ValueError(value)
                if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1, True, False):
                    raise ValueError(value)
                return bool(value)
            if self.kind == "int":
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError(value)
                if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
                    raise ValueError(value)
                value = int(value)
            elif self.kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError(value)
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError(f"option {self.key!r} expects a finite number, got {value!r}")
            elif self.kind == "list":
                value = self._coerce_list(value)
            elif value is not None:
                if not isinstance(value, (str, int, float, bool)) or isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(value)
                value = str(value)
        except (TypeError, ValueError, OverflowError) as exc:
            if str(exc).startswith("option "):
                raise
            raise ValueError(f"option {self.key!r} expects a {self.kind}, got {short_repr(value)}") from None
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"option {self.key!r} must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"option {self.key!r} must be <= {self.maximum}, got {value!r}")
        return self.validate(value) if self.validate is not None else value

    def _coerce_list(self, value: Any) -> list[Any]:
        """A list option's value: a comma-separated string or a list of scalars (see `coerce`)."""
        if isinstance(value, str):
            items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise ValueError(value)
        if len(items) > MAX_LIST_ITEMS:
            raise ValueError(f"option {self.key!r} takes at most {MAX_LIST_ITEMS} items, got {len(items)}")
        sample = self.default[0] if isinstance(self.default, list) and self.default else None
        for item in items:
            if isinstance(item, (list, tuple, dict)) or not isinstance(item, (str, int, float, bool)):
                raise ValueError(f"option {self.key!r} takes a list of text or numbers, got an item "
                                 f"{short_repr(item)}")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"option {self.key!r}: list items must be finite numbers, got {item!r}")
            if sample is not None and isinstance(sample, str) and not isinstance(item, str):
                raise ValueError(f"option {self.key!r} takes a list of text, got an item {short_repr(item)}")
        return items


def short_repr(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters (a 500-deep list must not make a 5 MB error message)."""
    try:
        text = repr(value) if not isinstance(value, (list, dict, tuple)) else f"a {type(value).__name__}"
    except (RecursionError, ValueError):
        text = f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Options:
    """Registered options plus their current values, persisted to `config.json`."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.infos: dict[str, OptionInfo] = {}
        self._values: dict[str, Any] = {}
        self._lock = threading.RLock()
        if path is not None:
            self._values.update(self._load(path))

    @staticmethod
    def _load(path: Path) -> dict[str, Any]:
        """config.json's values. A malformed file (bad JSON, not an object, too deep, a FIFO ...) does not stop
        the server: it is moved aside to `config.json.broken-<time>` with a warning, and the defaults are used."""
        try:
            loaded = read_json(path, default={})
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a JSON object, found a {type(loaded).__name__}")
            return loaded
        except (ValueError, OSError) as exc:
            aside = path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            try:
                os.replace(path, aside)
                where = f"moved aside to {aside.name}"
            except OSError as move_exc:
                where = f"could not be moved aside ({move_exc.strerror or move_exc})"
            log.warning("%s is not usable (%s); it was %s and the defaults are used", path, exc, where)
            return {}

    def register(self, info: OptionInfo) -> None:
        """Add an option; a value already in config.json is validated now (a bad one falls back to the default)."""
        with self._lock:
            self.infos[info.key] = info
            if info.key in self._values:
                try:
                    self._values[info.key] = info.coerce(self._values[info.key])
                except ValueError as exc:
                    log.warning("config.json: %s; using the default %r", exc, info.default)
                    self._values[info.key] = info.default

    def add(self, key: str, default: Any, label: str, section: str = "General", **kwargs: Any) -> None:
        """Shorthand for `register(OptionInfo(...))`."""
        self.register(OptionInfo(key=key, default=default, label=label, section=section, **kwargs))

    def get(self, key: str) -> Any:
        with self._lock:
            if key in self._values:
                return self._values[key]
            if key in self.infos:
                return self.infos[key].default
        raise KeyError(f"unknown option {key!r}")

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key in ("path", "infos"):
            raise AttributeError(key)
        try:
            return self.get(key)
        except KeyError as exc:
            raise AttributeError(str(exc)) from exc

    def set(self, key: str, value: Any, save: bool = True) -> bool:
        """Validate and set one registered option; returns True when the value changed. Unknown keys raise KeyError."""
        with self._lock:
            if key not in self.infos:
                raise KeyError(f"unknown option {key!r}")
            info = self.infos[key]
            value = info.coerce(value)
            choices = info.current_choices()
            if choices is not None and value not in choices and info.kind != "list":
                raise ValueError(f"option {key!r} must be one of {choices!r}, got {value!r}")
            old = self.get(key)
            before = dict(self._values)
            self._values[key] = value
            if save:
                self._save_or_restore(before)
        if old != value and info.onchange is not None:
            info.onchange(value)
        return old != value

    def update(self, values: dict[str, Any]) -> list[str]:
        """Set several options at once (all validated before any is applied); returns the keys that changed."""
        with self._lock:
            for key, value in values.items():
                if key not in self.infos:
                    raise KeyError(f"unknown option {key!r}")
                self.infos[key].coerce(value)
            before = dict(self._values)
            changed = [key for key, value in values.items() if self.set(key, value, save=False)]
            self._save_or_restore(before)
            return changed

    @staticmethod
    def check_unregistered(values: dict[str, Any]) -> None:
        """ValueError naming the key when a value for an unregistered key could not be kept as standard JSON in
        config.json and served back: NaN/Infinity, nesting deeper than `MAX_UNREGISTERED_DEPTH`, or more than
        `MAX_UNREGISTERED_BYTES` of JSON."""
        for key, value in values.items():
            if safe_json.nesting_depth(value, MAX_UNREGISTERED_DEPTH) > MAX_UNREGISTERED_DEPTH:
                raise ValueError(f"option {key!r}: nested deeper than {MAX_UNREGISTERED_DEPTH} levels")
            try:
                size = len(safe_json.dumps(value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"option {key!r}: not storable as standard JSON ({exc})") from None
            if size > MAX_UNREGISTERED_BYTES:
                raise ValueError(f"option {key!r}: {size} bytes of JSON, at most {MAX_UNREGISTERED_BYTES}")

    def store_unregistered(self, values: dict[str, Any], save: bool = True) -> None:
        """Keep values of keys nobody registered, unchanged (as for unknown keys in config.json: an A1111 client may
        set options of extensions this WebUI does not have). Registered keys raise KeyError: use `set`/`update`;
        values `check_unregistered` refuses raise ValueError."""
        self.check_unregistered(values)
        with self._lock:
            known = sorted(key for key in values if key in self.infos)
            if known:
                raise KeyError(f"registered option(s) {', '.join(known)}: use set/update")
            before = dict(self._values)
            self._values.update(values)
            if save:
                self._save_or_restore(before)

    def _save_or_restore(self, before: dict[str, Any]) -> None:
        """Write config.json; when that fails, put the values back to `before` (nothing half-applied) and raise."""
        try:
            self.save()
        except OSError:
            self._values = before
            raise

    def as_dict(self) -> dict[str, Any]:
        """Every registered option's current value plus the unknown keys kept from config.json."""
        with self._lock:
            data = dict(self._values)
            for key, info in self.infos.items():
                data.setdefault(key, info.default)
            return data

    def save(self) -> None:
        if self.path is not None:
            with self._lock:
                write_json_atomic(self.path, self.as_dict())
