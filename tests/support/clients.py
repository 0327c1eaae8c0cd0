"""Real subscription clients, one per transport a frontend uses, speaking each protocol.

Each is a coroutine that returns what the client saw once the server completed the stream,
so a test can watch several streams at once and query the API while they run.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


@dataclass
class Stream:
    """What a client saw: execution results in order, and whether the server completed."""

    results: list[dict[str, Any]] = field(default_factory=list)
    completed: bool = False
    pings: int = 0
    # Where each connection's results begin (a resubscribing client has more than one).
    starts: list[int] = field(default_factory=list)

    @property
    def jobs(self) -> list[dict[str, Any]]:
        return [r["data"]["job"] for r in self.results if r.get("data")]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e for r in self.results for e in r.get("errors") or []]

    def add(self, result: dict[str, Any], on_result: OnResult | None) -> None:
        self.results.append(result)
        if on_result:
            on_result(result)


OnResult = Callable[[dict[str, Any]], None]


class Transport(Protocol):
    def __call__(
        self, base_url: str, query: str, variables: dict[str, Any], within: float = 60,
        on_result: OnResult | None = None, authorization: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Awaitable[Stream]: ...  # fmt: skip


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/graphql"


def websocket(base_url: str, subprotocol: str, **options: Any) -> connect:
    """A WebSocket to the API speaking ``subprotocol``; ``options`` go to websockets' connect."""
    return connect(ws_url(base_url), subprotocols=[Subprotocol(subprotocol)], **options)


async def receive(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await ws.recv())


async def send(ws: ClientConnection, message: dict[str, Any]) -> None:
    await ws.send(json.dumps(message))


@dataclass(frozen=True)
class WsProtocol:
    """The message names that differ between the two WebSocket protocols."""

    subprotocol: str
    start: str
    data: str
    keep_alive: str


TRANSPORT_WS = WsProtocol("graphql-transport-ws", start="subscribe", data="next", keep_alive="ping")
LEGACY_WS = WsProtocol("graphql-ws", start="start", data="data", keep_alive="ka")


async def _websocket(
    protocol: WsProtocol, base_url: str, query: str, variables: dict[str, Any],
    within: float, on_result: OnResult | None, authorization: str | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:  # fmt: skip
    stream = Stream()
    upgrade = websocket(base_url, protocol.subprotocol, additional_headers=headers)
    async with asyncio.timeout(within), upgrade as ws:
        await _operation(ws, protocol, stream, query, variables, on_result, authorization)
    return stream


async def _operation(
    ws: ClientConnection, protocol: WsProtocol, stream: Stream, query: str,
    variables: dict[str, Any], on_result: OnResult | None, authorization: str | None = None,
) -> None:  # fmt: skip
    """Initialise ``ws``, subscribe as operation "1" and read until the server completes it."""
    init = {"Authorization": authorization} if authorization else {}
    await send(ws, {"type": "connection_init", "payload": init})
    assert (await receive(ws))["type"] == "connection_ack"
    payload = {"query": query, "variables": variables}
    await send(ws, {"id": "1", "type": protocol.start, "payload": payload})
    stream.starts.append(len(stream.results))
    while not stream.completed:
        message = await receive(ws)
        if message["type"] == protocol.data:
            stream.add(message["payload"], on_result)
        elif message["type"] == "error":
            errors = message["payload"]
            stream.results.append({"errors": errors if isinstance(errors, list) else [errors]})
            break
        elif message["type"] == "complete":
            stream.completed = True
        elif message["type"] == protocol.keep_alive:
            stream.pings += 1
            if protocol is TRANSPORT_WS:
                await send(ws, {"type": "pong"})


async def resubscribing(
    base_urls: Sequence[str], query: str, variables: dict[str, Any], within: float = 90,
    on_result: OnResult | None = None, protocol: WsProtocol = TRANSPORT_WS,
) -> Stream:  # fmt: skip
    """A client that outlives its connection, as graphql-ws's ``retryAttempts`` does: when
    the socket drops it connects again (to the next of ``base_urls`` in turn) and sends the
    same subscribe; the server answers with the snapshot and goes on to the end."""
    stream = Stream()
    attempt = 0
    async with asyncio.timeout(within):
        while True:
            url = base_urls[attempt % len(base_urls)]
            try:
                async with websocket(url, protocol.subprotocol) as ws:
                    await _operation(ws, protocol, stream, query, variables, on_result)
                return stream
            except (ConnectionClosed, OSError):
                if stream.completed:
                    return stream
                attempt += 1
                await asyncio.sleep(0.1 * min(attempt, 5))


async def graphql_transport_ws(
    base_url: str, query: str, variables: dict[str, Any], within: float = 60,
    on_result: OnResult | None = None, authorization: str | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:  # fmt: skip
    """graphql-ws's protocol: Apollo's GraphQLWsLink and GraphiQL speak it."""
    return await _websocket(
        TRANSPORT_WS, base_url, query, variables, within, on_result, authorization, headers
    )


async def graphql_ws(
    base_url: str, query: str, variables: dict[str, Any], within: float = 60,
    on_result: OnResult | None = None, authorization: str | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:  # fmt: skip
    """The legacy subscriptions-transport-ws protocol."""
    return await _websocket(
        LEGACY_WS, base_url, query, variables, within, on_result, authorization, headers
    )


# One TLS context for every HTTP client: httpx builds one per client otherwise (about 18 ms
# of CPU each), which made a load test's own client its bottleneck.
_TLS = ssl.create_default_context()


async def _http_stream(
    base_url: str, accept: str, query: str, variables: dict[str, Any], within: float,
    authorization: str | None = None, extra_headers: dict[str, str] | None = None,
) -> AsyncIterator[str]:  # fmt: skip
    headers = {"accept": accept, **(extra_headers or {})}
    if authorization:
        headers["authorization"] = authorization
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=within, verify=_TLS) as client,
        client.stream(
            "POST",
            "/graphql",
            json={"query": query, "variables": variables},
            headers=headers,
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        async for chunk in response.aiter_text():
            yield chunk


async def multipart(
    base_url: str, query: str, variables: dict[str, Any], within: float = 60,
    on_result: OnResult | None = None, authorization: str | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:  # fmt: skip
    """Apollo Client's HTTP subscriptions: multipart/mixed with subscriptionSpec 1.0."""
    stream = Stream()
    accept = 'multipart/mixed;subscriptionSpec="1.0",application/json'
    buffer = ""
    chunks = _http_stream(base_url, accept, query, variables, within, authorization, headers)
    async with asyncio.timeout(within), aclosing(chunks):
        async for chunk in chunks:
            buffer += chunk
            *parts, buffer = buffer.split("\r\n--graphql")
            for part in parts:
                if "\r\n\r\n" not in part:
                    continue
                body = json.loads(part.split("\r\n\r\n", 1)[1])
                if not body:
                    stream.pings += 1  # heartbeat
                elif "payload" in body:
                    stream.add(body["payload"], on_result)
            if buffer.startswith("--"):
                stream.completed = True
    return stream


async def sse(
    base_url: str, query: str, variables: dict[str, Any], within: float = 60,
    on_result: OnResult | None = None, authorization: str | None = None,
    headers: dict[str, str] | None = None,
) -> Stream:  # fmt: skip
    """graphql-sse, distinct connections mode: one POST, a text/event-stream answer."""
    stream = Stream()
    buffer = ""
    chunks = _http_stream(
        base_url, "text/event-stream", query, variables, within, authorization, headers
    )
    async with asyncio.timeout(within), aclosing(chunks):
        async for chunk in chunks:
            buffer += chunk.replace("\r\n", "\n")
            *events, buffer = buffer.split("\n\n")
            for event in events:
                fields = dict(
                    line.split(": ", 1) if ": " in line else (line, "")
                    for line in event.splitlines()
                )
                if "event" not in fields:
                    stream.pings += 1
                elif fields["event"] == "next":
                    stream.add(json.loads(fields["data"]), on_result)
                elif fields["event"] == "complete":
                    stream.completed = True
    return stream


TRANSPORTS: dict[str, Transport] = {
    "graphql-transport-ws": graphql_transport_ws,
    "graphql-ws": graphql_ws,
    "multipart": multipart,
    "sse": sse,
}


async def reconnecting(
    transport: str, base_urls: Sequence[str], query: str, variables: dict[str, Any],
    within: float = 90, on_result: OnResult | None = None,
) -> Stream:  # fmt: skip
    """A subscriber on ``transport`` that outlives its connection and its server, reading
    ``base_urls`` afresh at every attempt (a caller may change the list: a load balancer's
    rotation). The WebSocket protocols reconnect as :func:`resubscribing` does. An HTTP
    stream (multipart, SSE) that drops, or that the server ends before the job's final state
    (a replica that shuts down ends its streams normally), is asked for again on the next
    server: an HTTP client knows it is not done until it has seen the final state."""
    if transport in ("graphql-transport-ws", "graphql-ws"):
        protocol = TRANSPORT_WS if transport == "graphql-transport-ws" else LEGACY_WS
        return await resubscribing(base_urls, query, variables, within, on_result, protocol)
    stream = Stream()
    attempt = 0
    async with asyncio.timeout(within):
        while True:
            url = base_urls[attempt % len(base_urls)]
            try:
                part = await TRANSPORTS[transport](url, query, variables, within, on_result)
            except (httpx.HTTPError, OSError):
                part = None
            if part is not None:
                stream.starts.append(len(stream.results))
                stream.results.extend(part.results)
                stream.pings += part.pings
                if part.completed and part.jobs and part.jobs[-1]["done"]:
                    stream.completed = True
                    return stream
            attempt += 1
            await asyncio.sleep(0.1 * min(attempt, 5))
