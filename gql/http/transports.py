"""GraphQL at /graphql over every transport a client uses, with keep-alives on each."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from cross_web import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.http.streaming import (
    MultipartSubscriptionTransport,
    SSETransport,
)
from strawberry.subscriptions import (
    GRAPHQL_SSE_PROTOCOL,
    GRAPHQL_TRANSPORT_WS_PROTOCOL,
    GRAPHQL_WS_PROTOCOL,
    MULTIPART_SUBSCRIPTION_PROTOCOL,
)
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from gql.http import graphiql
from gql.http.web import PRINCIPAL
from gql.http.ws_handlers import LegacyWsHandler, TransportWsHandler
from gql.schema.context import Context
from gql.services.auth import ANONYMOUS_PRINCIPAL, Authenticator, credential_of
from gql.services.errors import ErrorCode, Unauthenticated

_ACK = cast(UnsetType, UNSET)  # a plain connection_ack, without a payload

SUBSCRIPTION_PROTOCOLS = (
    GRAPHQL_TRANSPORT_WS_PROTOCOL,  # graphql-ws: Apollo's GraphQLWsLink, GraphiQL
    GRAPHQL_WS_PROTOCOL,  # legacy subscriptions-transport-ws
    MULTIPART_SUBSCRIPTION_PROTOCOL,  # Apollo Client's default over HTTP
    GRAPHQL_SSE_PROTOCOL,  # text/event-stream
)


# How a streamed subscription ends on each HTTP transport: the closing boundary of
# multipart/mixed, the `complete` event of SSE. Nothing may follow it.
_STREAM_ENDINGS = frozenset(
    {MultipartSubscriptionTransport().encode_complete(), SSETransport().encode_complete()}
)


def ending_at_the_end(stream: Callable[[], AsyncIterator[str]]) -> Callable[[], AsyncIterator[str]]:
    """The stream, stopped right after its ending.

    Strawberry's ``merge_stream_with_heartbeat`` (0.341) lets a heartbeat that was waiting
    for the queue slip in between the stream's ending and its end marker, so a heartbeat
    part went out after multipart's closing ``--graphql--``: a strict client reads it as a
    malformed part (seen under load in tests/faults/test_subscription_faults.py).
    """

    async def ended() -> AsyncIterator[str]:
        source = stream()
        try:
            async for chunk in source:
                yield chunk
                if chunk in _STREAM_ENDINGS:
                    return
        finally:
            close = getattr(source, "aclose", None)
            if close is not None:
                await close()

    return ended


class JobQLGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view, routed straight from the app: no FastAPI dependency solving
    per request (a measurable share of a small query's time), the same four transports."""

    graphql_transport_ws_handler_class = TransportWsHandler
    graphql_ws_handler_class = LegacyWsHandler

    def __init__(
        self,
        *args: Any,
        authenticator: Authenticator,
        max_concurrent: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.authenticator = authenticator
        self._admission = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._ping_interval: float = kwargs.get("keep_alive_interval", 15.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Plain HTTP operations take a turn at a bounded number of slots: the rest park
        without queueing CPU work on the loop, so other endpoints keep answering promptly."""
        if scope["type"] == "websocket":
            pings = ServerPings(send, self._ping_interval)
            try:
                await super().__call__(scope, receive, pings.send)
            finally:
                await pings.stop()
            return
        try:
            if self._admission is None or scope["type"] != "http" or _streams(scope):
                await super().__call__(scope, receive, send)
                return
            async with self._admission:
                await super().__call__(scope, receive, send)
        except ClientDisconnect:
            # The client left before its body was read (Strawberry reads a multipart or SSE
            # request's body itself): nobody is left to answer, and nothing went wrong here.
            # Unhandled, uvicorn logged it as an exception (found by ``tests/faults/test_load.py``).
            return

    def parse_json(self, data: str | bytes) -> Any:
        """A body that is JSON but not an object (``false``, ``1``) is the caller's error:
        Strawberry 0.341.2 answered it with a 500 (found by ``tests/faults/test_fuzz.py``)."""
        parsed = super().parse_json(data)
        if not isinstance(parsed, dict | list):
            raise HTTPException(400, "The request body must be a JSON object")
        if isinstance(parsed, dict) and not isinstance(parsed.get("operationName"), str | None):
            raise HTTPException(400, "The GraphQL operation's `operationName` must be a string")
        return parsed

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        state = request.app.state
        context = Context(
            jobs=state.jobs,
            health=state.health,
            broadcast=state.broadcast,
            limits=state.limits,
            principal=request.scope.get(PRINCIPAL, ANONYMOUS_PRINCIPAL),
            workflows=state.workflows,
            schedules=state.schedules,
        )
        context.request = request
        return context

    async def create_streaming_response(
        self,
        request: Request | WebSocket,
        stream: Callable[[], AsyncIterator[str]],
        sub_response: Response,
        headers: Mapping[str, str],
    ) -> Response:
        return await super().create_streaming_response(
            request, ending_at_the_end(stream), sub_response, headers
        )

    async def render_graphql_ide(self, request: Request) -> Response:
        """JobQL's own GraphiQL page, its assets served from this origin."""
        return graphiql.page()

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """A request refused before execution (syntax, validation, limits) has no ``data``
        at all, as the GraphQL spec says (Strawberry sends ``"data": null``), so that
        :mod:`gql.http.conventions` can give it a 4xx under
        ``application/graphql-response+json``."""
        response = await super().process_result(request, result)
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            response.pop("data", None)
        return response

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """A WebSocket's caller, from ``connection_init`` or else the upgrade's headers.

        Refused, the socket closes with 4403 (graphql-transport-ws) or answers
        ``connection_error`` (legacy graphql-ws) before any operation runs.
        """
        if not self.authenticator.enabled:
            return _ACK
        credential = credential_of(context.connection_params)
        scope = context.request.scope if context.request is not None else {}
        if credential is None and context.request is not None:
            credential = context.request.headers.get("authorization")
        try:
            context.principal = await self.authenticator.authenticate_scope(scope, credential)
        except Unauthenticated as exc:
            code = ErrorCode.UNAUTHENTICATED.value
            raise ConnectionRejectionError({"message": str(exc), "code": code}) from None
        return _ACK


class ServerPings:
    """Server pings on graphql-transport-ws, so idle proxies keep the socket open.

    The protocol lets either side ping, and Strawberry's handler never does; the legacy
    protocol has its own ``ka`` messages, and the multipart and SSE transports their
    heartbeats. Pings go out through the ASGI ``send`` once the server acknowledged the
    connection, so no part of Strawberry's handler is touched.
    """

    def __init__(self, send: Send, interval: float) -> None:
        self._send = send
        self._interval = interval
        self._transport_ws = False
        self._pinger: asyncio.Task[None] | None = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            self._transport_ws = message.get("subprotocol") == GRAPHQL_TRANSPORT_WS_PROTOCOL
        await self._send(message)
        if kind == "websocket.send" and self._transport_ws and self._pinger is None:
            acknowledged = json.loads(message.get("text") or "{}").get("type") == "connection_ack"
            self._pinger = asyncio.create_task(self._ping_forever()) if acknowledged else None

    async def _ping_forever(self) -> None:
        with contextlib.suppress(Exception):  # the socket closed: the view ends soon
            while True:
                await asyncio.sleep(self._interval)
                await self._send({"type": "websocket.send", "text": _PING})

    async def stop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger


_PING = json.dumps({"type": "ping"})


def _streams(scope: Scope) -> bool:
    """Multipart and SSE subscriptions are long-lived: they never hold a slot."""
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"multipart/mixed" in value or b"text/event-stream" in value
    return False
