"""HTTP connections with small send buffers, so a slow subscriber's backlog waits in its bounded
queue (:mod:`gql.live.broadcast`), where progress coalesces, not in a kernel buffer Linux grows
to megabytes, where nothing can merge it; and a WebSocket protocol that writes a connection's
whole loop pass in one write. Both extend uvicorn's undocumented protocol classes, so each runs
only as :mod:`gql.compat.register` allows and otherwise behaves exactly as uvicorn's own
(``jobql api`` passes ``--http gql.http.sockets:BoundedHttpToolsProtocol``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from gql.compat import register as compat
from gql.compat.register import HttpToolsProtocol, WebSocketsSansIOProtocol

SEND_BUFFER_BYTES = 32 * 1024
WRITE_HIGH_WATER_BYTES = 8 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with small send buffers and coalescing WebSockets."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        coalescing = compat.COALESCING_WEBSOCKETS.active
        if coalescing and self.ws_protocol_class is WebSocketsSansIOProtocol:
            self.ws_protocol_class = CoalescingWebSocketsProtocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if compat.BOUNDED_SOCKETS.active:
            _bound(transport)
        super().connection_made(transport)


def _bound(transport: asyncio.Transport) -> None:
    """Small kernel and transport buffers: a slow reader's backlog stays coalescible."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
    transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)


class CoalescingWebSocketsProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, writing once per loop pass instead of once per message.

    Each write to a socket is a system call, and on loopback the kernel delivers the data
    to the reader inside that call: with thousands of subscriptions it was the largest
    single cost of sending an event. Frames sent to one connection while the loop runs its
    ready callbacks are joined and written when those callbacks are done, so a burst of
    events costs one write per connection; a lone event waits for nothing but the end of
    the current pass.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_CoalescingTransport(transport))  # type: ignore[arg-type]


class _CoalescingTransport:
    """The transport, with writes gathered until the loop's current pass ends."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self._transport: Any = transport
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(data)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
