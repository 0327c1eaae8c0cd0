"""An answer computed at most once per period, however many callers ask at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Cached(Generic[T]):
    """Serves ``compute()``'s last answer for ``seconds``; concurrent callers share one call.

    A dashboard polling every second, or many of them, then costs one check per period.
    An answer ``keep`` refuses (a failed check) is shared by concurrent callers only, so a
    recovery shows at once.
    """

    def __init__(
        self,
        compute: Callable[[], Awaitable[T]],
        seconds: float,
        keep: Callable[[T], bool] = lambda _: True,
    ) -> None:
        self._compute = compute
        self._seconds = seconds
        self._keep = keep
        self._value: tuple[float, T] | None = None
        self._running: asyncio.Future[T] | None = None

    async def get(self) -> T:
        if self._value is not None and time.monotonic() - self._value[0] < self._seconds:
            return self._value[1]
        if self._running is None:
            self._running = asyncio.ensure_future(self._refresh())
        return await asyncio.shield(self._running)

    def forget(self) -> None:
        """The next ``get`` computes anew (one already running is still shared)."""
        self._value = None

    async def _refresh(self) -> T:
        try:
            value = await self._compute()
            self._value = (time.monotonic(), value) if self._keep(value) else None
            return value
        finally:
            self._running = None
