"""The reliability ledger: every fault scenario ends by reconciling what it submitted.

submitted = reached a terminal state + rejected at submission (typed); lost = 0; duplicate
side effects = 0 (effects keyed by job id); every subscriber got the terminal state or was
closed with an explicit code; stalled subscribers = 0. The figures of each scenario are
printed at the end of the run; ``make reliability`` also writes them to
``bench/results/reliability.md`` (``JOBQL_LEDGER_OUT``). ``JOBQL_RELIABILITY=full`` runs
each scenario at its full size, ``make test`` at its smallest.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

FULL = os.environ.get("JOBQL_RELIABILITY") == "full"


def scale(small: int, full: int) -> int:
    """A scenario's size: smallest in ``make test``, full in ``make reliability``."""
    return full if FULL else small


@dataclass
class Ledger:
    scenario: str
    submitted: int = 0
    terminal: Counter[str] = field(default_factory=Counter)  # state -> jobs
    rejected: Counter[str] = field(default_factory=Counter)  # error code or reason -> jobs
    reruns: int = 0  # jobs whose body ran more than once (at-least-once, shown as attempts)
    duplicate_effects: int = 0  # effects applied more than once for one job id
    subscribers: int = 0
    subscribers_ended: int = 0  # received the terminal state
    subscribers_closed: int = 0  # closed by the server with an explicit code
    seconds: float = 0.0
    settled: bool = False
    notes: list[str] = field(default_factory=list)  # what else the scenario measured

    @property
    def lost(self) -> int:
        return self.submitted - sum(self.terminal.values()) - sum(self.rejected.values())

    @property
    def stalled(self) -> int:
        return self.subscribers - self.subscribers_ended - self.subscribers_closed

    def settle(self) -> None:
        """The reconciliation every scenario must pass."""
        assert self.lost == 0, f"{self.scenario}: {self.lost} job(s) lost: {self}"
        assert self.duplicate_effects == 0, f"{self.scenario}: duplicate side effects: {self}"
        assert self.stalled == 0, f"{self.scenario}: {self.stalled} stalled subscriber(s)"
        self.settled = True

    def row(self) -> str:
        def spread(counts: Counter[str]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "0"

        return (
            f"| {self.scenario} | {self.submitted} | {spread(self.terminal)} | "
            f"{spread(self.rejected)} | {self.lost} | {self.reruns} | {self.duplicate_effects} | "
            f"{self.subscribers} | {self.subscribers_ended} | {self.subscribers_closed} | "
            f"{self.stalled} | {self.seconds:.1f} | {'; '.join(self.notes)} |"
        )


HEADER = (
    "| scenario | submitted | terminal | rejected | lost | re-runs | duplicate effects | "
    "subscribers | got the end | closed with a code | stalled | s | measured |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)

_settled: list[Ledger] = []
# Rows settled in pytest-xdist's workers, gathered by the controller that prints them.
_from_workers: list[str] = []


@pytest.fixture
def ledger(request: pytest.FixtureRequest) -> Iterator[Ledger]:
    """This test's ledger, named after the test; recorded once the test settled it."""
    name = request.node.name.removeprefix("test_").replace("_", " ")
    book = Ledger(scenario=name)
    started = datetime.now(UTC)
    yield book
    book.seconds = (datetime.now(UTC) - started).total_seconds()
    if book.settled:
        _settled.append(book)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand this worker's rows to the controller."""
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["ledger"] = [book.row() for book in _settled]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """In xdist's controller: a worker finished; keep its rows."""
    _from_workers.extend(getattr(node, "workeroutput", {}).get("ledger", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = [*(book.row() for book in _settled), *_from_workers]
    if not rows:
        return
    table = "\n".join([HEADER, *sorted(rows)])
    terminalreporter.write_sep("-", "reliability ledger")
    terminalreporter.write_line(table)
    out = os.environ.get("JOBQL_LEDGER_OUT")
    if out:
        size = "full" if FULL else "smallest"
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(
            f"# Reliability ledger\n\nEach fault scenario at its {size} size, "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC (`make reliability`).\n\n{table}\n"
        )
