"""The register of library internals: what each kind does with the switches, and that a
failed check falls back loudly."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from tasks.core import compat


@dataclass
class Switches:
    fast_paths: bool = True
    fast_paths_off: list[str] = field(default_factory=list)


def _passes() -> None:
    pass


def _fails() -> None:
    raise LookupError("Thing.method(payload) is gone")


def _internals() -> tuple[compat.Internal, compat.Internal, compat.Internal]:
    return (
        compat.fix("t.fix", "lib", "lib 1.0", "the bug", upstream="lib#1"),
        compat.speed_up("t.speed", "lib", "lib 1.0", "the slow way", figure="P1"),
        compat.design("t.design", "lib", "lib 1.0", "the producer", why="one call"),
    )


def test_the_switch_turns_speed_ups_off_and_leaves_fixes_and_the_design_on() -> None:
    internals = _internals()
    decided = [compat.decide(i, _passes, Switches(fast_paths=False)) for i in internals]
    assert decided == [True, False, True]
    assert internals[1].reason == "JOBQL_FAST_PATHS=false"
    report = compat.report()
    assert (report["t.fix"]["kind"], report["t.fix"]["why"]) == ("fix", "lib#1")
    assert (report["t.speed"]["kind"], report["t.speed"]["why"]) == ("speed-up", "P1")


def test_one_speed_up_is_switched_off_by_name() -> None:
    fix, speed, _ = _internals()
    switches = Switches(fast_paths_off=["t.speed", "t.fix"])
    assert compat.decide(speed, _passes, switches) is False
    assert speed.reason == "JOBQL_FAST_PATHS_OFF"
    assert compat.decide(fix, _passes, switches) is True, "a fix is not a speed-up to switch"


def test_a_failed_check_turns_any_kind_off_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fix, _, _ = _internals()
    with caplog.at_level(logging.WARNING, logger="tasks.core.compat"):
        assert compat.decide(fix, _fails, Switches()) is False
        assert compat.decide(fix, _fails, Switches()) is False
    assert fix.reason == "LookupError: Thing.method(payload) is gone"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "fix 't.fix' is off" in warned[0] and "the bug" in warned[0]
