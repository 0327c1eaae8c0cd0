"""The cyclic garbage collector, tuned for an API that holds many subscriptions.

CPython's collector stops the world, so each collection is a loop stall as long as the
objects it walks. An API holding 10,000 ``job(id)`` subscriptions keeps about a million
tracked objects alive, and measured on it:

- a young collection walks what was allocated since the last one: ``gen0_threshold``
  objects, a few ms per 10,000;
- the middle generation gathers up to 10 young collections' survivors: with a young
  threshold of 100,000 (this module's former default) that was a million objects and a
  0.8-5 s stall, falling due at a random moment (10,000 subscriptions closing, in the bench);
- a full collection walks every live object (0.8 s at 10,000 subscriptions). Python runs
  one whenever the objects that survived to the old generation grew by a quarter since the
  last, so while subscriptions come and go it can run every few seconds.

So what start-up allocated is frozen (never walked again), both young generations are
kept small, and a full collection may run at most once per ``full_interval`` seconds, when
Python's own rule wants one: a window opens on a timer and closes when one has run.
Cyclic garbage that reached the old generation (rare here: measured, a few objects per
thousand closed subscriptions) waits for the next window instead of a quarter's growth.

Python 3.12 and 3.13 collect as 3.11 does. 3.14.0-3.14.4 shipped an incremental collector
that ignores the third threshold (the window then changes nothing); 3.14.5 and 3.15 went
back to 3.13's. A generational incremental collector is proposed for 3.16 (PEP 848).
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
