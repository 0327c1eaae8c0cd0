"""A loopback TCP proxy for fault tests: forwards, refuses, black-holes (accepts, never answers),
or stalls (a partition: every connection, open or new, stays up but nothing crosses it; bytes
sent meanwhile are held and delivered when it forwards again, as TCP delivers them once a
partition heals).

It runs its own asyncio loop on a thread, so sync and async tests alike can switch its mode
while processes talk through it. Loopback only; it stops with :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

from devtools.processes import free_port

Mode = Literal["forward", "refuse", "blackhole", "stall"]


class LoopbackProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.mode: Mode = "forward"
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing: asyncio.Event | None = None  # made on the proxy's loop; clear: stalled

    def start(self) -> LoopbackProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    def set_mode(self, mode: Mode) -> None:
        """Switch; every open connection is cut so clients meet the new mode at once, except
        into and out of ``stall``, which keeps them: a stall holds their bytes, and forwarding
        again after it delivers what was held."""
        asyncio.run_coroutine_threadsafe(self._switch(mode), self._loop).result(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._switch("refuse"), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        if self._flowing is None:
            self._flowing = asyncio.Event()
            self._flowing.set()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _switch(self, mode: Mode) -> None:
        assert self._flowing is not None
        # A stall beginning or healing keeps every connection; any other switch cuts them.
        keep = "stall" in (mode, self.mode) and {mode, self.mode} <= {"stall", "forward"}
        self.mode = mode
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        if keep:
            return
        for task in list(self._tasks):
            task.cancel()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            if self.mode == "blackhole":
                await asyncio.Event().wait()  # read nothing, answer nothing, until cut
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            assert self._flowing is not None
            flowing = self._flowing
            try:
                await asyncio.gather(
                    _pipe(reader, up_writer, flowing), _pipe(up_reader, writer, flowing)
                )
            finally:
                up_writer.close()
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            await flowing.wait()  # stalled: held here (and in the socket buffers behind it)
            writer.write(data)
            await writer.drain()
    writer.close()
