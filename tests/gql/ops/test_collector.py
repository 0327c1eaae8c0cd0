"""The API's garbage-collector policy: full collections wait for their window.

In-process on purpose: what is tested is the interpreter's collector under the policy, as
the API's lifespan starts and stops it. A full collection is a stall as long as the heap
takes to walk; these would fail if one could run outside the window, or if the window
never opened.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from gql.ops.collector import CLOSED, MIDDLE, GarbageCollector


class Cycle:
    """Garbage only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def full_collections() -> Iterator[list[float]]:
    """The times of the automatic full collections while the test runs."""
    seen: list[float] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(asyncio.get_running_loop().time())

    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)


def grow_old_generation(objects: int) -> list[Cycle]:
    """Long-lived objects (they survive to the old generation) plus cyclic garbage, enough
    to make Python's own rule want a full collection many times over."""
    kept = [Cycle() for _ in range(objects)]
    for _ in range(objects):
        Cycle()
    return kept


async def test_full_collections_wait_for_the_window_then_run_once(
    full_collections: list[float],
) -> None:
    defaults = gc.get_threshold()
    collector = GarbageCollector(gen0_threshold=1_000, full_interval=0.5)
    collector.start()
    try:
        assert gc.get_threshold() == (1_000, MIDDLE, CLOSED)
        kept = grow_old_generation(200_000)  # 50 middle collections, each promoting
        assert full_collections == [], "a full collection ran outside its window"

        await asyncio.sleep(0.6)  # the window opens; the next growth may collect fully
        kept += grow_old_generation(200_000)
        assert len(full_collections) == 1, "the window opened for one full collection"
        assert gc.get_threshold()[2] == CLOSED, "the window closed after it"
    finally:
        collector.stop()
    assert gc.get_threshold() == defaults
    del kept


async def test_both_settings_zero_leave_python_alone(full_collections: list[float]) -> None:
    defaults = gc.get_threshold()
    collector = GarbageCollector(gen0_threshold=0, full_interval=0)
    collector.start()
    try:
        assert gc.get_threshold() == defaults
        kept = grow_old_generation(200_000)
        assert full_collections, "Python's own rule collects fully as the heap grows"
    finally:
        collector.stop()
    del kept
