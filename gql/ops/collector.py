"""The cyclic garbage collector, tuned for an API that holds many subscriptions: CPython's
collector stops the world, and thousands of held subscriptions keep a great many tracked objects
alive, so a middle or full collection falling due at a random moment stalled every stream for as
long as it walked them. So what start-up allocated is frozen, both young generations are kept
small, and a full collection runs at most once per ``full_interval``
(``JOBQL_GC_FULL_INTERVAL``), when Python's own rule wants one.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

# Young collections between middle ones (Python: 10). The middle generation walks up to
# this many young collections' survivors at once: 30,000 objects, 10-30 ms, not 100,000.
MIDDLE = 3
# An old-generation threshold no run of middle collections reaches: full collections wait
# for the window. (The threshold counts middle collections since the last full one.)
CLOSED = 1 << 30


class GarbageCollector:
    def __init__(self, gen0_threshold: int, full_interval: float) -> None:
        self._gen0 = gen0_threshold
        self._interval = full_interval
        self._defaults = gc.get_threshold()
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0

    def start(self) -> None:
        """Freeze what start-up allocated and apply the policy (both settings 0: Python's)."""
        if not self._gen0 and not self._interval:
            return
        gc.freeze()
        gen0, gen1, gen2 = self._defaults
        if self._gen0:
            gen0, gen1 = self._gen0, MIDDLE
        if self._interval:
            gen2 = CLOSED
        gc.set_threshold(gen0, gen1, gen2)
        if self._interval:
            gc.callbacks.append(self._observe)
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self._interval, self._tick, loop)

    def stop(self) -> None:
        """Python's own thresholds again (what start-up froze stays frozen)."""
        if not self._gen0 and not self._interval:
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._observe in gc.callbacks:
            gc.callbacks.remove(self._observe)
        gc.set_threshold(*self._defaults)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the window: the next middle collection may be a full one, if Python's rule
        (a quarter's growth) wants it."""
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, self._defaults[2])
        self._timer = loop.call_later(self._interval, self._tick, loop)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        """Close the window after a full collection. A gc callback may run on any thread:
        it only sets the threshold and logs."""
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
            return
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, CLOSED)
        logger.info(
            "full garbage collection took %.0f ms (%d unreachable objects freed)",
            (time.perf_counter() - self._started) * 1000,
            info["collected"],
        )
