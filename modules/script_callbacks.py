"""Script callbacks: named events that extensions hook into.

Events (arguments): `app_started(webui, fastapi_app)`, `model_loaded(model)`, `ui_settings(options)`,
`infotext_pasted(infotext, params)`, `before_process(p)`, `after_process(p, processed)`,
`before_ui(webui)`, `ui_tabs(webui)` (returns `(gradio_block, title, elem_id)` tuples), `list_unets`...
A callback that raises is logged with its origin and the others still run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

EVENTS = (
    "app_started",
    "model_loaded",
    "ui_settings",
    "infotext_pasted",
    "before_process",
    "after_process",
    "before_ui",
    "ui_tabs",
    "extra_networks_pages",
    "process_step",
)


class Callbacks:
    """Per-instance lists of callbacks by event name (no module globals)."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[..., Any]]] = defaultdict(list)

    def add(self, event: str, callback: Callable[..., Any]) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}; known: {', '.join(EVENTS)}")
        self._callbacks[event].append(callback)

    def remove(self, event: str, callback: Callable[..., Any]) -> None:
        if callback in self._callbacks.get(event, []):
            self._callbacks[event].remove(callback)

    def run(self, event: str, *args: Any, on_error: Callable[[str], None] | None = None) -> list[Any]:
        """Call every callback of `event`; returns their non-None results. A failure is logged with its traceback and
        not raised; `on_error` also gets a one-line message naming the callback and the cause (the host puts it
        under the image of the generation it affected)."""
        results = []
        for callback in list(self._callbacks.get(event, [])):
            try:
                result = callback(*args)
            except Exception as exc:
                name = getattr(callback, "__qualname__", callback)
                log.exception("callback %s for %s failed", name, event)
                if on_error is not None:
                    on_error(f"callback {name} for {event} failed: {type(exc).__name__}: {exc}")
                continue
            if result is not None:
                results.append(result)
        return results
