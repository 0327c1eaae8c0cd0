"""Real subscription clients, one per transport a frontend uses, speaking each protocol."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect


@dataclass
class Stream:
    """What a client saw: execution results in order, and whether the server completed."""

    results: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = False
    pings: int = 0

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return [r["data"]["job"] for r in self.results if r.get("data")]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for r in self.results for e in r.get("errors") or []]


OnResult = Callable[[dict[str, Any]], None]


def _ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/graphql"


def _recv(ws: ClientConnection, deadline: float) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))


@dataclass(frozen=True)
class WsProtocol:
    """The message names that differ between the two WebSocket protocols."""

    subprotocol: str
    start: str
    data: str
    keep_alive: str


TRANSPORT_WS = WsProtocol("graphql-transport-ws", start="subscribe", data="next", keep_alive="ping")
LEGACY_WS = WsProtocol("graphql-ws", start="start", data="data", keep_alive="ka")


def _websocket(
    protocol: WsProtocol, base_url: str, query: str, variables: dict[str, Any],
    timeout: float, on_result: OnResult | None,
) -> Stream:  # fmt: skip
    stream = Stream()
    deadline = time.monotonic() + timeout
    with connect(_ws_url(base_url), subprotocols=[protocol.subprotocol]) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert _recv(ws, deadline)["type"] == "connection_ack"
        payload = {"query": query, "variables": variables}
        ws.send(json.dumps({"id": "1", "type": protocol.start, "payload": payload}))
        while not stream.completed:
            message = _recv(ws, deadline)
            if message["type"] == protocol.data:
                stream.results.append(message["payload"])
                if on_result:
                    on_result(message["payload"])
            elif message["type"] == "error":
                errors = message["payload"]
                stream.results.append({"errors": errors if isinstance(errors, list) else [errors]})
                break
            elif message["type"] == "complete":
                stream.completed = True
            elif message["type"] == protocol.keep_alive:
                stream.pings += 1
                if protocol is TRANSPORT_WS:
                    ws.send(json.dumps({"type": "pong"}))
    return stream


def graphql_transport_ws(
    base_url: str, query: str, variables: dict[str, Any], timeout: float = 60,
    on_result: OnResult | None = None,
) -> Stream:  # fmt: skip
    """graphql-ws's protocol: Apollo's GraphQLWsLink and GraphiQL speak it."""
    return _websocket(TRANSPORT_WS, base_url, query, variables, timeout, on_result)


def graphql_ws(
    base_url: str, query: str, variables: dict[str, Any], timeout: float = 60,
    on_result: OnResult | None = None,
) -> Stream:  # fmt: skip
    """The legacy subscriptions-transport-ws protocol."""
    return _websocket(LEGACY_WS, base_url, query, variables, timeout, on_result)


def _http_stream(
    base_url: str, accept: str, query: str, variables: dict[str, Any], timeout: float
) -> Iterator[str]:
    with (
        httpx.Client(base_url=base_url, timeout=timeout) as client,
        client.stream(
            "POST",
            "/graphql",
            json={"query": query, "variables": variables},
            headers={"accept": accept},
        ) as response,
    ):
        assert response.status_code == 200, response.read()
        yield from response.iter_text()


def multipart(
    base_url: str, query: str, variables: dict[str, Any], timeout: float = 60,
    on_result: OnResult | None = None,
) -> Stream:  # fmt: skip
    """Apollo Client's HTTP subscriptions: multipart/mixed with subscriptionSpec 1.0."""
    stream = Stream()
    accept = 'multipart/mixed;subscriptionSpec="1.0",application/json'
    buffer = ""
    for chunk in _http_stream(base_url, accept, query, variables, timeout):
        buffer += chunk
        *parts, buffer = buffer.split("\r\n--graphql")
        for part in parts:
            if "\r\n\r\n" not in part:
                continue
            body = json.loads(part.split("\r\n\r\n", 1)[1])
            if not body:
                stream.pings += 1  # heartbeat
            elif "payload" in body:
                stream.results.append(body["payload"])
                if on_result:
                    on_result(body["payload"])
        if buffer.startswith("--"):
            stream.completed = True
    return stream


def sse(
    base_url: str, query: str, variables: dict[str, Any], timeout: float = 60,
    on_result: OnResult | None = None,
) -> Stream:  # fmt: skip
    """graphql-sse, distinct connections mode: one POST, a text/event-stream answer."""
    stream = Stream()
    buffer = ""
    for chunk in _http_stream(base_url, "text/event-stream", query, variables, timeout):
        buffer += chunk.replace("\r\n", "\n")
        *events, buffer = buffer.split("\n\n")
        for event in events:
            fields = dict(
                line.split(": ", 1) if ": " in line else (line, "") for line in event.splitlines()
            )
            if "event" not in fields:
                stream.pings += 1
            elif fields["event"] == "next":
                result = json.loads(fields["data"])
                stream.results.append(result)
                if on_result:
                    on_result(result)
            elif fields["event"] == "complete":
                stream.completed = True
    return stream


TRANSPORTS = {
    "graphql-transport-ws": graphql_transport_ws,
    "graphql-ws": graphql_ws,
    "multipart": multipart,
    "sse": sse,
}
