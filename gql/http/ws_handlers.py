"""Strawberry's two WebSocket protocol handlers, with each message's shape checked first:
Strawberry 0.341.2 reads a client message's fields unchecked, so a frame of ``null`` or ``[1]``,
or a ``subscribe`` whose ``id`` is a list, closed the socket abnormally (1006) with a traceback
(found by ``tests/faults/test_fuzz.py``). Such a message is refused the way each protocol refuses
a bad one (4400 on graphql-transport-ws, an ``error`` or nothing on the legacy one); a repeated
legacy ``connection_init`` is ignored, and query texts are interned.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, cast

from graphql import GraphQLFormattedError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ErrorMessage as TransportErrorMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionErrorMessage,
    ErrorMessage,
)

from gql.http.credentials import CredentialWatch
from gql.services.auth import Authenticator
from gql.services.errors import ErrorCode

# The close code of a socket whose credential ended: graphql-ws's "Forbidden", as for one
# refused at connection_init.
FORBIDDEN = 4403


def _text(value: object) -> bool:
    return isinstance(value, str)


def _optional(value: object, kind: type) -> bool:
    return value is None or isinstance(value, kind)


def _operation(payload: object) -> bool:
    """An operation's payload: a query string, optional name, variables and extensions."""
    return (
        isinstance(payload, dict)
        and _text(payload.get("query"))
        and _optional(payload.get("operationName"), str)
        and _optional(payload.get("variables"), dict)
        and _optional(payload.get("extensions"), dict)
    )


def _well_formed(message: object, needs_id: frozenset[str], operation: str) -> bool:
    if not isinstance(message, dict) or not _text(message.get("type")):
        return False
    kind = message["type"]
    if kind in needs_id and not _text(message.get("id")):
        return False
    return kind != operation or _operation(message.get("payload"))


def _shared_query(message: dict[str, Any], operation: str) -> None:
    """One copy of a query's text for every operation that sends it: a subscription holds
    its text for life, and a dashboard sends the same text thousands of times."""
    if message["type"] == operation:
        payload = message["payload"]
        payload["query"] = sys.intern(payload["query"])


def _watch(handler: Any, end: Any) -> CredentialWatch | None:
    """The credential watch of a handler's socket, once its ``connection_init`` is accepted
    (none when authentication is off: nobody's credential can end)."""
    authenticator = cast(Authenticator | None, getattr(handler.view, "authenticator", None))
    context = handler.context
    if authenticator is None or not authenticator.enabled or context.request is None:
        return None
    context.credential_watched = True
    return CredentialWatch(context.principal, context.request.scope, authenticator, end)


def _unauthenticated(reason: str) -> GraphQLFormattedError:
    return {"message": reason, "extensions": {"code": ErrorCode.UNAUTHENTICATED.value}}


class TransportWsHandler(BaseGraphQLTransportWSHandler[Any, None]):
    _credential: CredentialWatch | None = None

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and self._credential is None:
            self._credential = _watch(self, self._credential_ended)

    async def shutdown(self) -> None:
        if self._credential is not None:
            self._credential.stop()
        await super().shutdown()

    async def _credential_ended(self, reason: str) -> None:
        """Each operation errs with UNAUTHENTICATED and stops; then the socket closes."""
        with contextlib.suppress(Exception):  # the client may have gone meanwhile
            error = [_unauthenticated(reason)]
            for operation in list(self.operations.values()):
                task = operation.task
                await operation.send_operation_message(
                    TransportErrorMessage(id=operation.id, type="error", payload=error)
                )
                if task is not None:
                    task.cancel()
            await self.websocket.close(code=FORBIDDEN, reason=reason)

    async def handle_message(self, message: Any) -> None:
        if not _well_formed(message, frozenset({"subscribe", "complete"}), "subscribe"):
            await self.handle_invalid_message("Failed to parse message")
            return
        _shared_query(message, "subscribe")
        await super().handle_message(message)


class LegacyWsHandler(BaseGraphQLWSHandler[Any, None]):
    _credential: CredentialWatch | None = None

    async def handle_connection_init(self, message: Any) -> None:
        # A second init started a second keep-alive task that nobody stopped: its error
        # after the disconnect was logged as "Task exception was never retrieved".
        if not self.connection_acknowledged:
            await super().handle_connection_init(message)
            if self.connection_acknowledged:
                self._credential = _watch(self, self._credential_ended)

    async def cleanup(self) -> None:
        if self._credential is not None:
            self._credential.stop()
        await super().cleanup()

    async def _credential_ended(self, reason: str) -> None:
        """Each operation errs with UNAUTHENTICATED and stops, the connection is told why
        (``connection_error``, as when a credential is refused at its init); then it closes."""
        with contextlib.suppress(Exception):  # the client may have gone meanwhile
            error = _unauthenticated(reason)
            for operation_id in list(self.tasks):
                await self.send_message(ErrorMessage(type="error", id=operation_id, payload=error))
            if self.keep_alive_task is not None:
                self.keep_alive_task.cancel()
            await super().cleanup()
            code = ErrorCode.UNAUTHENTICATED.value
            await self.send_message(
                ConnectionErrorMessage(
                    type="connection_error", payload={"message": reason, "code": code}
                )
            )
            await self.websocket.close(code=FORBIDDEN, reason=reason)

    async def handle_message(self, message: Any) -> None:
        if not _well_formed(message, frozenset({"start", "stop"}), "start"):
            if isinstance(message, dict) and _text(message.get("id")):
                error = ErrorMessage(
                    type="error", id=message["id"], payload={"message": "Failed to parse message"}
                )
                await self.send_message(error)
            return
        _shared_query(message, "start")
        await super().handle_message(message)
