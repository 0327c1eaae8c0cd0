"""What wraps ``/graphql``: each HTTP request or WebSocket gets a request id (the client's
``X-Request-ID`` when it sends a sane one) that every log line of the exchange carries and the
response echoes, and its transport is named for the metrics. Long-lived exchanges register with
:class:`gql.http.drain.Drain`, which ends them on SIGTERM the way a completed subscription ends,
so the application behind sees its client leave and cleans up.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport

from gql.http.drain import Drain
from gql.ops.operations import TRANSPORT
from tasks.core.logs import REQUEST_ID

_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_STREAM_ENDS = {
    "multipart": MultipartSubscriptionTransport().encode_complete().encode(),
    "sse": SSETransport().encode_complete().encode(),
}
_WS_PROTOCOLS = ("graphql-transport-ws", "graphql-ws")
GOING_AWAY = 1001
# Request ids: this process's random prefix and a counter, no system call per request
# (uuid4 reads the OS's random source every time).
_PROCESS_TAG = secrets.token_hex(4)
_numbers = itertools.count(1)
_UNAVAILABLE = (
    b'{"errors":[{"message":"the server is shutting down; retry on another instance",'
    b'"extensions":{"code":"SERVICE_UNAVAILABLE"}}]}'
)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _transport(scope: Scope) -> str:
    if scope["type"] == "websocket":
        offered = scope.get("subprotocols") or ()
        return next((p for p in offered if p in _WS_PROTOCOLS), "websocket")
    accept = _header(scope, b"accept") or ""
    if "multipart/mixed" in accept:
        return "multipart"
    if "text/event-stream" in accept:
        return "sse"
    return "http"


class ObservedEndpoint:
    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = _header(scope, b"x-request-id")
        if given and _SANE_ID.fullmatch(given):
            request_id = given
        else:
            request_id = f"{_PROCESS_TAG}-{next(_numbers)}"
        REQUEST_ID.set(request_id)
        transport = _transport(scope)
        TRANSPORT.set(transport)
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif self.drain.draining:
            await _unavailable(send)
        elif transport in _STREAM_ENDS:
            await self._stream(scope, receive, send, _STREAM_ENDS[transport])
        else:
            await self.app(scope, receive, _echoing(send, request_id))

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.drain.draining:
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": GOING_AWAY})
            return
        gone = asyncio.Event()
        closed = False

        async def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                reason = "server shutting down"
                await send({"type": "websocket.close", "code": GOING_AWAY, "reason": reason})
            gone.set()

        async def guarded_send(message: Message) -> None:
            if not closed:
                await send(message)

        async def guarded_receive() -> Message:
            return await _until(receive, gone, {"type": "websocket.disconnect", "code": GOING_AWAY})

        done = self.drain.register(close)
        try:
            await self.app(scope, guarded_receive, guarded_send)
        finally:
            done()

    async def _stream(self, scope: Scope, receive: Receive, send: Send, end: bytes) -> None:
        gone = asyncio.Event()
        started = ended = False

        async def finish() -> None:
            nonlocal ended
            if started and not ended:
                ended = True
                await send({"type": "http.response.body", "body": end, "more_body": False})
            gone.set()

        async def guarded_send(message: Message) -> None:
            nonlocal started, ended
            if ended:
                return
            if message["type"] == "http.response.start":
                started = True
            elif not message.get("more_body", False):
                ended = True
            await send(message)

        async def guarded_receive() -> Message:
            return await _until(receive, gone, {"type": "http.disconnect"})

        done = self.drain.register(finish)
        try:
            await self.app(scope, guarded_receive, guarded_send)
        finally:
            done()


async def _until(receive: Receive, gone: asyncio.Event, instead: Message) -> Message:
    """The next message, or ``instead`` once ``gone`` is set (the client is let go)."""
    if gone.is_set():
        return instead
    message = asyncio.ensure_future(receive())
    waiter = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait({message, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if message.done():
        return message.result()
    message.cancel()
    return instead


def _echoing(send: Send, request_id: str) -> Send:
    async def echo(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", []))
            headers.append((b"x-request-id", request_id.encode()))
            message = {**message, "headers": headers}
        await send(message)

    return echo


async def _unavailable(send: Send) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": _UNAVAILABLE})
