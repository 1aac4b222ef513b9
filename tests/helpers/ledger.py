"""The reliability suite's ledger (see `tests/reliability/conftest.py`): what the suite tried, for its summary."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import pytest

FULL = os.environ.get("RELIABILITY_FULL", "") not in ("", "0")


@dataclass
class Ledger:
    """Counts for the summary; thread-safe (load tests count from client threads)."""

    full: bool = FULL
    bad_inputs: int = 0
    faults: int = 0
    requests: int = 0
    intact_checks: int = 0
    failures: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def bad_input(self, count: int = 1) -> None:
        with self._lock:
            self.bad_inputs += count

    def fault(self, count: int = 1) -> None:
        with self._lock:
            self.faults += count

    def served(self, count: int = 1) -> None:
        with self._lock:
            self.requests += count

    def intact(self, ok: bool, what: str) -> None:
        """One nothing-lost check: records a loss (and fails the calling test) when `ok` is false."""
        with self._lock:
            self.intact_checks += 1
            if not ok:
                self.lost.append(what)
        if not ok:
            pytest.fail(f"data lost: {what}")

    def summary_lines(self) -> list[str]:
        return [
            f"reliability summary ({'full' if self.full else 'quick'} form)",
            f"  bad inputs tried:  {self.bad_inputs}",
            f"  faults injected:   {self.faults}",
            f"  requests served:   {self.requests}",
            f"  intact checks:     {self.intact_checks}",
            f"  failures:          {len(self.failures)}",
            f"  data lost:         {len(self.lost)}",
            *[f"    failed: {name}" for name in self.failures],
            *[f"    lost: {what}" for what in self.lost],
        ]


LEDGER = Ledger()
