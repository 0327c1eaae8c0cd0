"""HTTP connections with small send buffers, so a slow client's backlog stays coalescible.

On loopback and fast links Linux grows a socket's send buffer to megabytes: a subscriber
that reads slowly would have thousands of stale progress events parked in the kernel,
where nothing can merge them, and would read them for minutes. With the buffers kept
small, writing blocks early, the subscription waits, and its bounded queue in
``gql.broadcast`` coalesces progress (latest wins) while keeping every state change.

Use it with ``uvicorn --http gql.sockets:BoundedHttpToolsProtocol``; a WebSocket upgrade
keeps the same transport and so the same limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

SEND_BUFFER_BYTES = 32 * 1024
WRITE_HIGH_WATER_BYTES = 8 * 1024


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER_BYTES)
        super().connection_made(transport)
