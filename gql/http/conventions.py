"""What Apollo Client and the GraphQL-over-HTTP spec expect of ``/graphql``, in front of
Strawberry's view: the ``application/graphql-response+json`` media type and its status codes,
automatic persisted queries over GET and POST (:mod:`gql.services.persisted`), and batches (a
JSON array answered by an array), each operation run as a request of its own, so it takes its own
admission slot and counts against the rate limits. Streams, WebSockets and GraphiQL's page pass
through untouched.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gql.services.persisted import NOT_FOUND, PersistedQueries, PersistedQueryError, requested_hash
from tasks.core.settings import Settings

GRAPHQL_RESPONSE_JSON = b"application/graphql-response+json"
APPLICATION_JSON = b"application/json"
# A response without data: its status by the first error's code (otherwise 400).
_STATUS_BY_CODE = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "RATE_LIMITED": 429,
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL_SERVER_ERROR": 500,
}


class Response:
    """A response of the view, held whole: status, headers, body."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def is_json(self) -> bool:
        return any(k == b"content-type" and APPLICATION_JSON in v for k, v in self.headers)


class HTTPConventions:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_batch = settings.max_operations_per_batch
        self.ttl = settings.persisted_query_ttl_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _streams(scope):
            await self.app(scope, receive, send)
            return
        modern = _accepts(scope, GRAPHQL_RESPONSE_JSON)
        try:
            if scope["method"] == "GET":
                scope = await self._get(scope)
                await self._one(scope, receive, send, modern)
                return
            body = await _read(receive)
            if _sniff(body, b"["):
                await self._batch(scope, body, send, modern)
                return
            if b'"persistedQuery"' in body:
                body = await self._persisted_body(scope, body)
        except PersistedQueryError as exc:
            # application/json answers a GraphQL error with 200; a malformed request with 400.
            status = 200 if exc.code == NOT_FOUND and not modern else _status(exc.code)
            await _reply(send, _error(str(exc), exc.code), modern, status=status)
            return
        await self._one(scope, _replay(body), send, modern)

    async def _one(self, scope: Scope, receive: Receive, send: Send, modern: bool) -> None:
        if not modern:
            await self.app(scope, receive, send)
            return
        held = Response()
        await self.app(scope, receive, held.send)
        status, body = held.status, held.body
        if held.is_json():
            status = _spec_status(status, body)
            held.headers = [
                (k, GRAPHQL_RESPONSE_JSON + b"; charset=utf-8" if k == b"content-type" else v)
                for k, v in held.headers
            ]
        await send({"type": "http.response.start", "status": status, "headers": held.headers})
        await send({"type": "http.response.body", "body": body})

    async def _get(self, scope: Scope) -> Scope:
        """A GET naming a persisted query gets its text in the query string."""
        raw: bytes = scope["query_string"]
        if b"persistedQuery" not in raw:
            return scope
        params = dict(parse_qsl(raw.decode("latin-1")))
        try:
            extensions = json.loads(params.get("extensions", "null"))
        except ValueError:
            return scope  # Strawberry answers the malformed request
        digest = requested_hash(extensions)
        if digest is None:
            return scope
        params["query"] = await self._store(scope).resolve(digest, params.get("query"))
        return {**scope, "query_string": urlencode(params).encode()}

    async def _persisted_body(self, scope: Scope, body: bytes) -> bytes:
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if not isinstance(payload, dict):
            return body
        digest = requested_hash(payload.get("extensions"))
        if digest is None:
            return body
        query = payload.get("query")
        resolved = await self._store(scope).resolve(digest, query)
        return body if resolved == query else json.dumps({**payload, "query": resolved}).encode()

    def _store(self, scope: Scope) -> PersistedQueries:
        return PersistedQueries(scope["app"].state.records, self.ttl)

    async def _batch(self, scope: Scope, body: bytes, send: Send, modern: bool) -> None:
        try:
            operations = json.loads(body)
        except ValueError:
            await _reply(send, _error("the body is not JSON", "BAD_REQUEST"), modern, status=400)
            return
        if not self.max_batch:
            await _reply(send, _error("batching is off", "BAD_REQUEST"), modern, status=400)
            return
        if not operations or len(operations) > self.max_batch:
            message = f"a batch holds 1 to {self.max_batch} operations"
            await _reply(send, _error(message, "BAD_REQUEST"), modern, status=400)
            return
        answers = await asyncio.gather(*(self._operation(scope, op) for op in operations))
        await _reply(send, b"[" + b",".join(answers) + b"]", modern, status=200)

    async def _operation(self, scope: Scope, operation: Any) -> bytes:
        """One operation of a batch through the view, as the JSON body of its answer."""
        if not isinstance(operation, dict):
            return _error("each operation of a batch is a JSON object", "BAD_REQUEST")
        body = json.dumps(operation).encode()
        try:
            if "persistedQuery" in (operation.get("extensions") or {}):
                body = await self._persisted_body(scope, body)
        except PersistedQueryError as exc:
            return _error(str(exc), exc.code)
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"accept")]
        headers += [
            (b"content-length", str(len(body)).encode()),
            (b"accept", APPLICATION_JSON),
        ]
        held = Response()
        await self.app({**scope, "headers": headers}, _replay(body), held.send)
        if held.is_json():
            return held.body
        return _error(held.body.decode(errors="replace") or f"HTTP {held.status}", "BAD_REQUEST")


def _spec_status(status: int, body: bytes) -> int:
    """graphql-response+json: a 200 without ``data`` becomes the error's 4xx/5xx."""
    if status != 200 or _sniff(body, b'{"data"'):
        return status
    try:
        answer = json.loads(body)
    except ValueError:
        return status
    if not isinstance(answer, dict) or "data" in answer:
        return status
    errors = answer.get("errors") or [{}]
    return _status((errors[0].get("extensions") or {}).get("code"))


def _status(code: str | None) -> int:
    return _STATUS_BY_CODE.get(code or "", 400)


def _error(message: str, code: str) -> bytes:
    return json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()


async def _reply(send: Send, body: bytes, modern: bool, *, status: int) -> None:
    media = GRAPHQL_RESPONSE_JSON if modern else APPLICATION_JSON
    headers = [
        (b"content-type", media + b"; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """The body read once, given again to the view; then the client's silence."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()  # like a client that keeps the connection open
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _sniff(body: bytes, prefix: bytes) -> bool:
    return body.lstrip()[: len(prefix)] == prefix


def _accepts(scope: Scope, media: bytes) -> bool:
    for name, value in scope["headers"]:
        if name == b"accept":
            return media in value
    return False


def _streams(scope: Scope) -> bool:
    """Multipart and SSE subscriptions stream: they are answered as they are."""
    for name, value in scope["headers"]:
        if name == b"accept":
            return b"multipart/mixed" in value or b"text/event-stream" in value
    return False
