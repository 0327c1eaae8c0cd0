"""How late the event loop runs a timer, because a stall (a slow callback, a long garbage
collection, a blocking call by mistake) delays every request, event and probe on the loop by as
much: a plain timer due every ``INTERVAL`` observes its lateness on
``jobql_event_loop_lag_seconds``, and the longest lag of each second is kept for ``KEPT``
seconds, so ``/health/stats`` and the bench read the longest stall of the last 10, 60 and 300
seconds without a reset.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from gql.ops import metrics

INTERVAL = 0.01
KEPT = 300


class LoopLag:
    def __init__(self) -> None:
        self._longest: deque[tuple[int, float]] = deque(maxlen=KEPT)  # (second, lag)
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        """Watch the running loop: a plain timer callback, no task (a task's wake-up costs
        several times more, a hundred times a second)."""
        self._arm(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # time.monotonic, not loop.time(): uvloop's clock counts whole milliseconds.
        self._due = time.monotonic() + INTERVAL
        self._timer = loop.call_later(INTERVAL, self._tick, loop)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = time.monotonic()
        self.note(now, max(0.0, now - self._due))
        self._arm(loop)

    def note(self, now: float, lag: float) -> None:
        metrics.LOOP_LAG.observe(lag)
        second = int(now)
        if self._longest and self._longest[-1][0] == second:
            if lag > self._longest[-1][1]:
                self._longest[-1] = (second, lag)
        else:
            self._longest.append((second, lag))

    def longest(self, seconds: int, now: float) -> float:
        """The longest lag (s) seen in the last ``seconds`` (``now``: ``time.monotonic()``)."""
        since = int(now) - seconds
        return max((lag for second, lag in self._longest if second > since), default=0.0)

    def report(self, window: int | None = None) -> dict[str, float]:
        """The longest stalls (ms) of the last 10, 60 and 300 s, and of the last ``window``
        seconds when asked (1 to 300: a bench reads exactly its own run)."""
        now = time.monotonic()
        windows = [10, 60, KEPT]
        if window is not None and 1 <= window <= KEPT:
            windows.append(window)
        return {
            f"longest_last_{seconds}s": round(self.longest(seconds, now) * 1000, 2)
            for seconds in windows
        }
