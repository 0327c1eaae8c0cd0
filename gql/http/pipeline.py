"""The one way into ``/graphql``. Every HTTP request and WebSocket passes these steps, in this
order, before Strawberry's view (:mod:`gql.http.view`) sees it:

1. its headers are read once (:mod:`gql.http.head`): the request id (the client's
   ``X-Request-ID`` when it is sane) goes into every log line and back in the response, the
   transport into the metrics;
2. while the API drains, a new request is answered ``SERVICE_UNAVAILABLE`` and a new WebSocket
   closed with 1001; exchanges already open register with :class:`gql.http.drain.Drain`, which
   ends them on SIGTERM the way a completed subscription ends;
3. an HTTP body larger than ``JOBQL_MAX_BODY_BYTES`` is refused (a chunked one as soon as it
   grows past it);
4. a request a browser could send cross-site without a preflight is refused (CSRF).

A refusal is a GraphQL-shaped JSON error with its ``extensions.code``. Who is asking, and
everything GraphQL about the request (batches, persisted queries, admission, status codes), is
the view's.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.http.streaming import MultipartSubscriptionTransport, SSETransport

from gql.http.drain import Drain
from gql.http.head import read_head
from gql.http.responses import error_body, media_type
from gql.ops.operations import TRANSPORT
from tasks.core.logs import REQUEST_ID
from tasks.core.settings import HTTPSettings

GOING_AWAY = 1001
_STREAM_ENDS = {
    "multipart": MultipartSubscriptionTransport().encode_complete().encode(),
    "sse": SSETransport().encode_complete().encode(),
}
# Content types a browser sends cross-site without a CORS preflight (Apollo Server's list).
_SIMPLE_TYPES = (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data")
_CSRF = (
    "This operation has been blocked as a potential Cross-Site Request Forgery (CSRF): send a "
    "Content-Type other than text/plain, form or multipart, or an `Apollo-Require-Preflight` "
    "header."
)


class TooLarge(Exception):
    pass


class GraphQLPipeline:
    def __init__(self, view: ASGIApp, drain: Drain, settings: HTTPSettings) -> None:
        self.view = view
        self.drain = drain
        self.max_body = settings.max_body_bytes
        self.csrf = settings.csrf_prevention

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = read_head(scope)
        REQUEST_ID.set(head.request_id)
        TRANSPORT.set(head.transport)
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        send = _echoing(send, head.request_id)
        modern = head.graphql_response
        if self.drain.draining:
            message = "the server is shutting down; retry on another instance"
            await _refuse(send, 503, "SERVICE_UNAVAILABLE", message, modern, close=True)
        elif head.content_length > self.max_body:
            message = f"the body exceeds {self.max_body} bytes"
            await _refuse(send, 413, "PAYLOAD_TOO_LARGE", message, modern)
        elif self.csrf and not head.ide and not head.preflighted and _simple(head.content_type):
            await _refuse(send, 400, "BAD_REQUEST", _CSRF, modern)
        else:
            if head.content_length < 0 and scope["method"] != "GET":
                receive = self._counted(receive)
            try:
                if head.streams:
                    await self._stream(scope, receive, send, _STREAM_ENDS[head.transport])
                else:
                    await self.view(scope, receive, send)
            except TooLarge:
                message = f"the body exceeds {self.max_body} bytes"
                await _refuse(send, 413, "PAYLOAD_TOO_LARGE", message, modern)

    def _counted(self, receive: Receive) -> Receive:
        """A chunked body, stopped as soon as it grows past the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise TooLarge
            return message

        return counted

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
            await self.view(scope, guarded_receive, guarded_send)
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
            await self.view(scope, guarded_receive, guarded_send)
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


def _simple(content_type: bytes | None) -> bool:
    """No Content-Type, or one a cross-site form or fetch may send without a preflight."""
    if not content_type:
        return True
    essence = content_type.split(b";", 1)[0].strip().lower()
    return essence in _SIMPLE_TYPES


def _echoing(send: Send, request_id: str) -> Send:
    echoed = (b"x-request-id", request_id.encode())

    async def echo(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers: list[Any] = list(message.get("headers", []))
            headers.append(echoed)
            message = {**message, "headers": headers}
        await send(message)

    return echo


async def _refuse(
    send: Send, status: int, code: str, message: str, modern: bool, *, close: bool = False
) -> None:
    body = error_body(message, code)
    headers = [
        (b"content-type", media_type(modern)),
        (b"content-length", str(len(body)).encode()),
    ]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
