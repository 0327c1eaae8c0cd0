"""The event loop's stalls are measured where an operator looks: /health/stats and /metrics."""

from __future__ import annotations

import asyncio
import time

from gql.ops.loop_lag import LoopLag
from tests.conftest import GraphQL


async def test_a_blocked_loop_shows_as_its_longest_stall() -> None:
    lag = LoopLag()
    lag.start()
    await asyncio.sleep(0.05)
    time.sleep(0.08)  # noqa: ASYNC251 - the blocking call on the loop a bug would make
    await asyncio.sleep(0.05)
    lag.stop()

    report = lag.report()
    assert report["longest_last_10s"] >= 60, report
    assert report["longest_last_10s"] == report["longest_last_300s"]


def test_the_api_reports_its_loop_stalls(api: GraphQL) -> None:
    stats = api.http.get("/health/stats").json()
    windows = {"longest_last_10s", "longest_last_60s", "longest_last_300s"}
    assert set(stats["loop_lag_ms"]) == windows
    assert 0 <= stats["loop_lag_ms"]["longest_last_10s"] < 1000

    asked = api.http.get("/health/stats", params={"loop_lag_seconds": 5}).json()["loop_lag_ms"]
    assert set(asked) == {*windows, "longest_last_5s"}

    exposition = api.http.get("/metrics").text
    assert "jobql_event_loop_lag_seconds_bucket" in exposition
