"""The reliability suite's ledger: every test here counts what it tried, and pytest prints one summary at the end.

    bad inputs tried   files/tags/requests that must be refused with a specific message
    faults injected    exceptions, interrupts, vanished files, failed writes forced on purpose
    requests served    HTTP requests answered under concurrent load
    failures           failed tests of this suite (must be 0)
    data lost          weights not bitwise as expected, files not intact after a fault (must be 0)

Quick form (the default, part of `./test.sh`): a sampled corpus, few hypothesis examples, a short load round.
Full form: `./test.sh --reliability` sets RELIABILITY_FULL=1 (every truncation offset, more examples, longer load).
Tests use the `ledger` fixture: `ledger.bad_input()`, `ledger.fault()`, `ledger.served()`, and
`ledger.intact(ok, what)` for each nothing-lost check (records a loss and fails the test when `ok` is false).
"""

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


@pytest.fixture(scope="session")
def ledger() -> Ledger:
    return LEDGER


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and "tests/reliability/" in report.nodeid.replace("\\", "/"):
        LEDGER.failures.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not (LEDGER.bad_inputs or LEDGER.faults or LEDGER.requests or LEDGER.failures or LEDGER.intact_checks):
        return
    terminalreporter.section("reliability")
    for line in LEDGER.summary_lines():
        terminalreporter.write_line(line)
