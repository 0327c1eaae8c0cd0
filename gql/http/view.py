"""Strawberry's view of ``/graphql`` over every transport a client uses, and everything GraphQL
about an HTTP request: who is asking (:meth:`JobQLView.get_context` for a request,
:meth:`JobQLView.on_ws_connect` for a WebSocket, both through one
:class:`~gql.services.auth.Authenticator`), batches (Strawberry's own, each operation with its own
admission slot and rate limit), automatic persisted queries, and the status and media type of the
answer (:mod:`gql.http.responses`). Keep-alives on every transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, cast

from cross_web import HTTPException
from graphql import GraphQLError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
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
from gql.http.head import HEAD, RequestHead, read_head
from gql.http.responses import (
    BAD_REQUEST,
    CODE_BY_STATUS,
    GRAPHQL_RESPONSE_JSON,
    error_body,
    media_type,
    status_of,
)
from gql.http.ws_handlers import LegacyWsHandler, TransportWsHandler
from gql.schema.context import Context
from gql.services.auth import ANONYMOUS_PRINCIPAL, Authenticator, Principal, credential_of
from gql.services.errors import ErrorCode, Unauthenticated
from gql.services.persisted import PersistedQueryError, requested_hash

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


class JobQLView(GraphQL[Context, None]):
    """Strawberry's ASGI view, routed straight from the app: no FastAPI dependency solving
    per request (a measurable share of a small query's time), the same four transports."""

    graphql_transport_ws_handler_class = TransportWsHandler
    graphql_ws_handler_class = LegacyWsHandler

    def __init__(
        self,
        *args: Any,
        authenticator: Authenticator,
        max_concurrent: int = 0,
        max_batch: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.authenticator = authenticator
        self.max_batch = max_batch
        self._admission = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._ping_interval: float = kwargs.get("keep_alive_interval", 15.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            pings = ServerPings(send, self._ping_interval)
            try:
                await super().__call__(scope, receive, pings.send)
            finally:
                await pings.stop()
            return
        try:
            response = await self.run(Request(scope, receive))
        except HTTPException as exc:
            code = CODE_BY_STATUS.get(exc.status_code, BAD_REQUEST)
            response = _refusal(exc.status_code, code, exc.reason, _head(scope))
        except Unauthenticated as exc:
            response = _refusal(401, ErrorCode.UNAUTHENTICATED, str(exc), _head(scope))
            response.headers["www-authenticate"] = 'Bearer realm="jobql"'
        except ClientDisconnect:
            # The client left before its body was read: nobody is left to answer, and
            # nothing went wrong here. Unhandled, uvicorn logged it as an exception (found
            # by ``tests/faults/test_load.py``).
            return
        await response(scope, receive, send)

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        """The services, and the caller of an HTTP request (a WebSocket's caller is known
        once its ``connection_init`` is accepted, in :meth:`on_ws_connect`)."""
        principal = ANONYMOUS_PRINCIPAL
        scope = request.scope
        if scope["type"] == "http" and self.authenticator.enabled:
            head = _head(scope)
            if not head.ide:
                principal = await self._sign_in(scope, head.credential)
        state = request.app.state
        context = Context(
            jobs=state.jobs,
            health=state.health,
            broadcast=state.broadcast,
            limits=state.limits,
            principal=principal,
            workflows=state.workflows,
            schedules=state.schedules,
        )
        context.request = request
        return context

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """A WebSocket's caller, from ``connection_init`` or else the upgrade's headers.

        Refused, the socket closes with 4403 (graphql-transport-ws) or answers
        ``connection_error`` (legacy graphql-ws) before any operation runs.
        """
        if not self.authenticator.enabled:
            return _ACK
        scope = context.request.scope if context.request is not None else {}
        credential = credential_of(context.connection_params)
        if credential is None and scope:
            credential = _head(scope).credential
        try:
            context.principal = await self._sign_in(scope, credential)
        except Unauthenticated as exc:
            code = ErrorCode.UNAUTHENTICATED.value
            raise ConnectionRejectionError({"message": str(exc), "code": code}) from None
        return _ACK

    async def _sign_in(self, scope: Mapping[str, Any], credential: str | None) -> Principal:
        return await self.authenticator.authenticate_scope(scope, credential)

    def parse_json(self, data: str | bytes) -> Any:
        """A body that is JSON but neither an object nor a batch (``false``, ``1``) is the
        caller's error: Strawberry 0.341.2 answered it with a 500 (found by
        ``tests/faults/test_fuzz.py``).
        A batch is checked here, before Strawberry reads its items."""
        parsed = super().parse_json(data)
        if isinstance(parsed, list):
            self._check_batch(parsed)
        elif not isinstance(parsed, dict):
            raise HTTPException(400, "The request body must be a JSON object")
        return parsed

    async def parse_http_body(self, request: Any) -> GraphQLRequestData | list[GraphQLRequestData]:
        """A lone operation's fields checked before it runs or streams (a batch's, each in
        :meth:`execute_single`, so one bad operation spoils no other)."""
        data = await super().parse_http_body(request)
        if isinstance(data, GraphQLRequestData) and (problem := _malformed(data)):
            raise HTTPException(400, problem)
        return data

    def _check_batch(self, operations: list[Any]) -> None:
        if not self.max_batch:
            raise HTTPException(400, "batching is off")
        if not operations or len(operations) > self.max_batch:
            raise HTTPException(400, f"a batch holds 1 to {self.max_batch} operations")
        for operation in operations:
            if not isinstance(operation, dict):
                raise HTTPException(400, "each operation of a batch is a JSON object")

    def should_render_graphql_ide(self, request: Any) -> bool:
        """Not for a GET naming a persisted query by its hash alone: that is an operation."""
        return super().should_render_graphql_ide(request) and (
            "extensions" not in request.query_params
        )

    async def execute_operation(
        self,
        request: Request,
        request_adapter: Any,
        request_data: GraphQLRequestData | list[GraphQLRequestData],
        context: Context,
        root_value: None,
        sub_response: Response,
    ) -> Any:
        """A lone operation's persisted query resolved before it runs or streams (a
        subscription over multipart or SSE sent by its id too); a batch's, item by item."""
        if isinstance(request_data, GraphQLRequestData):
            resolved = await _resolved(request, request_data, sub_response)
            if isinstance(resolved, ExecutionResult):
                return resolved
            request_data = resolved
        return await super().execute_operation(
            request, request_adapter, request_data, context, root_value, sub_response
        )

    async def execute_single(
        self,
        request: Request,
        request_adapter: Any,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """One operation, alone or in a batch: checked, its persisted query resolved, then
        run in an admission slot of its own, so the rest park without queueing CPU work on
        the loop and other endpoints keep answering promptly. A request that cannot be
        carried out is answered in its place (400), so one bad operation of a batch spoils
        no other."""
        if problem := _malformed(request_data):
            sub_response.status_code = 400
            return _refused(problem, BAD_REQUEST)
        resolved = await _resolved(request, request_data, sub_response)
        if isinstance(resolved, ExecutionResult):
            return resolved
        try:
            if self._admission is None:
                return await super().execute_single(
                    request, request_adapter, sub_response, context, root_value, resolved
                )
            async with self._admission:
                return await super().execute_single(
                    request, request_adapter, sub_response, context, root_value, resolved
                )
        except HTTPException as exc:
            sub_response.status_code = exc.status_code
            return _refused(exc.reason, BAD_REQUEST)

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        """A request refused before execution (syntax, validation, limits) has no ``data``
        at all, as the GraphQL spec says (Strawberry sends ``"data": null``), so that it can
        get a 4xx under ``application/graphql-response+json``."""
        response = await super().process_result(request, result)
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            response.pop("data", None)
        return response

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        if _head(request.scope).graphql_response:
            sub_response.media_type = GRAPHQL_RESPONSE_JSON
        return sub_response

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        """The answer with the media type the client accepts, and its status: set where the
        request was found malformed, else by its errors (:func:`gql.http.responses.status_of`)."""
        response = super().create_response(response_data, sub_response)
        modern = sub_response.media_type == GRAPHQL_RESPONSE_JSON
        if modern:
            response.headers["content-type"] = GRAPHQL_RESPONSE_JSON
        if isinstance(response_data, list) or not sub_response.status_code:
            response.status_code = status_of(cast(Any, response_data), modern)
        return response

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


def _head(scope: Mapping[str, Any]) -> RequestHead:
    """The request's head, as :class:`gql.http.pipeline.GraphQLPipeline` read it."""
    head = scope.get(HEAD)
    return head if head is not None else read_head(cast(Scope, scope))


def _malformed(operation: GraphQLRequestData) -> str | None:
    """What is wrong with an operation's fields. Strawberry (0.341) checks a lone request's
    query, variables and extensions, not a batch's, and passed a number as ``operationName``
    on to a 500 (found by ``tests/faults/test_fuzz.py``)."""
    for field, value, kind, name in (
        ("query", operation.query, str, "a string"),
        ("variables", operation.variables, dict, "an object"),
        ("extensions", operation.extensions, dict, "an object"),
        ("operationName", operation.operation_name, str, "a string"),
    ):
        if not isinstance(value, kind | None):
            return f"The GraphQL operation's `{field}` must be {name} or null, if provided."
    return None


async def _resolved(
    request: Request, data: GraphQLRequestData, sub_response: Response
) -> GraphQLRequestData | ExecutionResult:
    """The operation with its persisted query's text (:mod:`gql.services.persisted`, or the
    trusted documents' :mod:`gql.services.trusted`), its ``persistedQuery`` extension spent;
    or the answer in its place when the hash cannot be used."""
    try:
        digest = requested_hash(data.extensions)
        if digest is None:
            return data
        query = await request.app.state.persisted.resolve(digest, data.query)
    except PersistedQueryError as exc:
        if exc.code == BAD_REQUEST:
            sub_response.status_code = 400
        return _refused(str(exc), exc.code)
    extensions = {k: v for k, v in (data.extensions or {}).items() if k != "persistedQuery"}
    return dataclasses.replace(data, query=query, extensions=extensions or None)


def _refused(message: str, code: str) -> ExecutionResult:
    return ExecutionResult(data=None, errors=[GraphQLError(message, extensions={"code": code})])


def _refusal(status: int, code: str, message: str, head: RequestHead) -> Response:
    return Response(
        error_body(message, code),
        status_code=status,
        media_type=media_type(head.graphql_response).decode(),
    )


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
