"""The HTTP door of ``/graphql``: body size, CSRF prevention and authentication, decided in one
pass over the request headers before Strawberry parses anything. A rejection is a GraphQL-shaped
JSON error with its ``extensions.code``; an accepted request carries its
:class:`~gql.services.auth.Principal` in the ASGI scope, where ``get_context`` finds it.
WebSocket upgrades pass through: Strawberry checks their Origin against the CORS allow-list, and
``JobQLGraphQL.on_ws_connect`` their credential.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gql.services.auth import Authenticator
from gql.services.errors import Unauthenticated
from tasks.core.settings import Settings

PRINCIPAL = "jobql.principal"
# Content types a browser sends cross-site without a CORS preflight (Apollo Server's list).
_SIMPLE_TYPES = (b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data")
_PREFLIGHT_HEADERS = (b"x-apollo-operation-name", b"apollo-require-preflight")


class TooLarge(Exception):
    pass


class GraphQLDoor:
    """Wraps the GraphQL view: what gets past it is small, not forged, and authenticated."""

    def __init__(self, app: ASGIApp, settings: Settings, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator
        self.max_body = settings.max_body_bytes
        self.csrf = settings.csrf_prevention

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = -1
        content_type: bytes | None = None
        credential: str | None = None
        preflighted = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else self.max_body + 1
            elif name == b"content-type":
                content_type = value
            elif name == b"authorization":
                credential = value.decode("latin-1")
            elif name in _PREFLIGHT_HEADERS and value:
                preflighted = True
        if length > self.max_body:
            await _reject(send, 413, "PAYLOAD_TOO_LARGE", f"the body exceeds {self.max_body} bytes")
            return
        # GraphiQL's page (a GET without a query) is static and needs neither check; a GET
        # naming a persisted query by its hash alone is an operation.
        query_string = scope["query_string"]
        ide = scope["method"] == "GET" and not (
            b"query=" in query_string or b"extensions=" in query_string
        )
        if self.csrf and not ide and not preflighted and _simple(content_type):
            await _reject(
                send,
                400,
                "BAD_REQUEST",
                "This operation has been blocked as a potential Cross-Site Request Forgery "
                "(CSRF): send a Content-Type other than text/plain, form or multipart, or an "
                "`Apollo-Require-Preflight` header.",
            )
            return
        if self.auth.enabled and not ide:
            try:
                scope[PRINCIPAL] = await self.auth.authenticate_scope(scope, credential)
            except Unauthenticated as exc:
                await _reject(send, 401, "UNAUTHENTICATED", str(exc), www_authenticate=True)
                return
        if length < 0 and scope["method"] != "GET":
            receive = self._counted(receive)
            try:
                await self.app(scope, receive, send)
            except TooLarge:
                await _reject(send, 413, "PAYLOAD_TOO_LARGE", f"the body exceeds {self.max_body}")
            return
        await self.app(scope, receive, send)

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


def _simple(content_type: bytes | None) -> bool:
    """No Content-Type, or one a cross-site form or fetch may send without a preflight."""
    if not content_type:
        return True
    essence = content_type.split(b";", 1)[0].strip().lower()
    return essence in _SIMPLE_TYPES


async def _reject(
    send: Send, status: int, code: str, message: str, *, www_authenticate: bool = False
) -> None:
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    if www_authenticate:
        headers.append((b"www-authenticate", b'Bearer realm="jobql"'))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    await send(start)
    await send({"type": "http.response.body", "body": body})
