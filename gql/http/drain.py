"""Graceful shutdown that tells every subscriber at once: uvicorn, on SIGTERM, waits up to
``--timeout-graceful-shutdown`` for open connections before the app's lifespan ends, so a
subscription would hold its connection for the whole wait and then be cut. :class:`Drain` chains
onto the SIGTERM and SIGINT handlers: at once every WebSocket is closed with 1001 (going away:
clients reconnect elsewhere) and every multipart or SSE stream gets its normal end, while plain
operations in flight finish and new ones get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[None]]


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._closers: set[Closer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        """Chain onto the handlers of SIGTERM and SIGINT (uvicorn's, when it runs us)."""
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)
            signal.signal(sig, self._handler(previous))

    def _handler(self, previous: Any) -> Callable[[int, FrameType | None], None]:
        def handle(sig: int, frame: FrameType | None) -> None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.begin)
            if callable(previous):
                previous(sig, frame)
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt if sig == signal.SIGINT else SystemExit(128 + sig)

        return handle

    def register(self, closer: Closer) -> Callable[[], None]:
        """``closer`` runs when draining begins; call the returned function once done."""
        self._closers.add(closer)
        return lambda: self._closers.discard(closer)

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        logger.info("shutting down: closing %d subscription connection(s)", len(self._closers))
        for closer in list(self._closers):
            task = asyncio.ensure_future(self._close(closer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _close(closer: Closer) -> None:
        with contextlib.suppress(Exception):
            await closer()
