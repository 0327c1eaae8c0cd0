"""Strawberry's two WebSocket protocol handlers, with each message's shape checked first:
Strawberry 0.341.2 reads a client message's fields unchecked, so a frame of ``null`` or ``[1]``,
or a ``subscribe`` whose ``id`` is a list, closed the socket abnormally (1006) with a traceback
(found by ``tests/faults/test_fuzz.py``). Such a message is refused the way each protocol refuses
a bad one (4400 on graphql-transport-ws, an ``error`` or nothing on the legacy one); a repeated
legacy ``connection_init`` is ignored, and query texts are interned.
"""

from __future__ import annotations

import sys
from typing import Any

from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
)
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage


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


class TransportWsHandler(BaseGraphQLTransportWSHandler[Any, None]):
    async def handle_message(self, message: Any) -> None:
        if not _well_formed(message, frozenset({"subscribe", "complete"}), "subscribe"):
            await self.handle_invalid_message("Failed to parse message")
            return
        _shared_query(message, "subscribe")
        await super().handle_message(message)


class LegacyWsHandler(BaseGraphQLWSHandler[Any, None]):
    async def handle_connection_init(self, message: Any) -> None:
        # A second init started a second keep-alive task that nobody stopped: its error
        # after the disconnect was logged as "Task exception was never retrieved".
        if not self.connection_acknowledged:
            await super().handle_connection_init(message)

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
