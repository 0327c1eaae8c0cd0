"""Running ``async def`` task bodies in a worker, which Celery 5 does not do by itself: each
worker process keeps one event loop on a background thread for its whole life, so coroutines
share connections and clients across jobs instead of paying ``asyncio.run`` per job, and a
thread-pool worker can run several of them at once.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def _worker_loop() -> asyncio.AbstractEventLoop:
    """The loop of this process; a forked pool child starts its own."""
    global _loop
    with _lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="jobql-async-tasks", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


def run_coroutine(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await ``coroutine`` on the worker's loop and return its result to the Celery thread."""
    future: Future[T] = asyncio.run_coroutine_threadsafe(coroutine, _worker_loop())
    try:
        return future.result()
    except BaseException:
        # A soft time limit or a revoke interrupts the waiting thread: stop the coroutine too.
        future.cancel()
        raise
