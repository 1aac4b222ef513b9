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

import pytest

from tests.helpers.ledger import LEDGER, Ledger


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
