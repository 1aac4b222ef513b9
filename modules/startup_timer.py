"""Start-up timing: what the server spends from launch to serving, phase by phase, for the console's one-line summary.

`StartupTimer()` starts counting when it is made (`launch.py` makes it first thing, so imports count); `phase(name)`
times a block and logs what it is about to do, `record(name)` books the time since the last mark; `summary()` is the
one line the server prints once it listens, e.g. `startup 7.9 s (CPU 7.5 s): imports 3.1 s, extensions 0.6 s (LoRA scan, 10 files
0.1 s), model load 1.2 s, UI build 2.7 s, server start 0.3 s`. Lives on the WebUI object (`webui.startup`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("startup")


@dataclass
class Phase:
    """A running phase; its `label` may be changed inside the block (e.g. to add a count found on the way)."""

    label: str


class StartupTimer:
    """Phases of the start-up in order, with their seconds (nested phases are shown inside their parent)."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.mark = self.start
        self.phases: list[tuple[str, float, int]] = []  # (label, seconds, depth)
        self._depth = 0

    def record(self, label: str) -> float:
        """Book the time since the last mark as `label`; returns its seconds."""
        now = time.perf_counter()
        seconds = now - self.mark
        self.phases.append((label, seconds, self._depth))
        self.mark = now
        return seconds

    @contextmanager
    def phase(self, label: str, doing: str | None = None) -> Iterator[Phase]:
        """Time the block as `label` (nested phases count inside it); logs `doing` first when given."""
        if doing:
            log.info("%s", doing)
        if self._depth == 0 and time.perf_counter() - self.mark > 0.05:
            self.record("other")
        started = time.perf_counter()
        index = len(self.phases)
        self._depth += 1
        current = Phase(label)
        try:
            yield current
        finally:
            self._depth -= 1
            now = time.perf_counter()
            self.phases.insert(index, (current.label, now - started, self._depth))
            self.mark = now

    def total(self) -> float:
        """Seconds since the timer started."""
        return time.perf_counter() - self.start

    def summary(self) -> str:
        """`startup T s: phase s, phase s (sub s), ...`."""
        parts: list[str] = []
        for label, seconds, depth in self.phases:
            text = f"{label} {seconds:.1f} s"
            if depth and parts:
                parts[-1] = parts[-1][:-1] + f", {text})" if parts[-1].endswith(")") else parts[-1] + f" ({text})"
            else:
                parts.append(text)
        # CPU seconds of the process too: on a busy machine the wall time mostly measures the other jobs.
        return f"startup {self.total():.1f} s (CPU {time.process_time():.1f} s): " + ", ".join(parts)
