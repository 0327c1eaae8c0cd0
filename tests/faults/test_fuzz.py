"""Bad input on every transport, fuzzed (bounded): no 5xx, no crash, only protocol close codes.

Random JSON bodies and variables over HTTP, random frames over both WebSocket protocols,
random bodies to the multipart and SSE subscription endpoints. After each run the API still
answers and its log has no unhandled exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed

from tests.conftest import GraphQL
from tests.support.clients import websocket
from tests.support.ledger import scale

SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
JSON = st.recursive(
    SCALARS | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=15,
)
# Bodies that look like GraphQL requests, and anything else.
REQUESTS = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {
            "query": st.one_of(
                st.text(max_size=60),
                st.sampled_from(
                    [
                        "{ job(id: $id) { id } }",
                        "query($id: ID!) { job(id: $id) { id state } }",
                        'mutation($i: JSON!) { enqueue(task: "process_data", input: $i) { id } }',
                        "{ __typename }",
                    ]
                ),
            )
        },
        optional={"variables": JSON, "operationName": JSON, "extensions": JSON},
    ),
)
FRAMES = st.one_of(
    st.text(max_size=80),
    JSON.map(json.dumps),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(
                [
                    "connection_init",
                    "subscribe",
                    "start",
                    "ping",
                    "pong",
                    "complete",
                    "stop",
                    "connection_terminate",
                    "next",
                    "bogus",
                ]
            )
        },
        optional={"id": JSON, "payload": JSON},
    ).map(json.dumps),
)
# graphql-transport-ws's codes (4400 bad message, 4401 unauthorized, 4403 forbidden, 4406
# subprotocol, 4408 init timeout, 4409 duplicate id, 4429 too many inits) and the
# WebSocket ones a server may use (1000 normal, 1001 going away, 1008 policy, 1009 too big).
PROTOCOL_CLOSE_CODES = {1000, 1001, 1008, 1009, 4400, 4401, 4403, 4406, 4408, 4409, 4429}
EXAMPLES = scale(100, 1000)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _api_log(api: GraphQL, data_dir: Path) -> Path:
    return data_dir / f"api-{api.base_url.rsplit(':', 1)[1]}.log"


@pytest.fixture(scope="module")
def log_offset(api: GraphQL, data_dir: Path) -> int:
    """Where the API's log stood before this module's fuzzing began."""
    return _api_log(api, data_dir).stat().st_size


@FUZZ
@given(body=REQUESTS, as_text=st.booleans())
async def test_random_http_bodies_never_get_a_5xx(
    api: GraphQL, log_offset: int, body: Any, as_text: bool
) -> None:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        if as_text:
            response = await http.post(
                "/graphql", content=json.dumps(body)[:-1] or "{",
                headers={"content-type": "application/json"},
            )  # fmt: skip
        else:
            response = await http.post("/graphql", json=body)
        assert response.status_code < 500, response.text


STREAMS = ("multipart/mixed;subscriptionSpec=1.0", "text/event-stream")


@pytest.mark.parametrize("accept", STREAMS)
@pytest.mark.parametrize(
    "body",
    [{"query": "0"}, {"query": "subscription {"}, False, 1, "text", [1], {"query": 5}],
)
async def test_bad_bodies_to_the_streaming_transports_are_answered_not_cut(
    api: GraphQL, log_offset: int, accept: str, body: Any
) -> None:
    """Found by this module's fuzz: a query that does not parse, or a body that is not an
    object, cut the multipart or SSE connection (or answered 500) with a traceback."""
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10) as http:
        response = await http.post("/graphql", json=body, headers={"accept": accept})
    assert response.status_code < 500, response.text


@FUZZ
@given(frames=st.lists(FRAMES, min_size=1, max_size=5), legacy=st.booleans())
async def test_random_websocket_frames_close_only_with_protocol_codes(
    api: GraphQL, log_offset: int, frames: list[str], legacy: bool
) -> None:
    subprotocol = "graphql-ws" if legacy else "graphql-transport-ws"
    async with websocket(api.base_url, subprotocol, open_timeout=10) as ws:
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            for frame in frames:
                await ws.send(frame)
            await ws.send(json.dumps({"type": "connection_init"}))
            while True:  # read what the server answers until it goes quiet or closes
                await asyncio.wait_for(ws.recv(), 0.1)
    assert ws.close_code in PROTOCOL_CLOSE_CODES, ws.close_code


@pytest.mark.parametrize("accept", [*STREAMS, "application/json"])
async def test_a_client_that_leaves_before_its_body_arrived_leaves_no_traceback(
    api: GraphQL, data_dir: Path, log_offset: int, accept: str
) -> None:
    """Found by ``tests/faults/test_load.py``: a multipart or SSE client that went away while
    sending its body made Starlette raise ``ClientDisconnect`` out of the application."""
    offset = _api_log(api, data_dir).stat().st_size
    host, port = api.base_url.removeprefix("http://").split(":")
    _, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /graphql HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Accept: {accept}\r\nContent-Length: 100\r\n\r\n"
    )
    writer.write(head.encode() + b'{"query": "subscription')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()  # gone, 70 bytes short
    await writer.wait_closed()
    await asyncio.sleep(0.3)
    assert api.data("{ __typename }") == {"__typename": "Query"}
    with _api_log(api, data_dir).open() as log:
        log.seek(offset)
        assert "Traceback" not in log.read()


# Bodies for the streaming transports, mostly well-formed so that most reach an operation:
# subscriptions that run (on no job, or on every job), that do not parse or validate,
# other operations, and anything else.
STREAM_QUERIES = st.sampled_from(
    [
        "subscription($id: ID!) { job(id: $id) { id state progress { percent } } }",
        "subscription { jobs { id state } }",
        "subscription { job(id: 5) { nope } }",
        "subscription A { jobs { id } } subscription B { jobs { id } }",
        "{ __typename }",
        'mutation { enqueue(task: "no.such.task") { id } }',
    ]
)
STREAM_OPERATION = st.fixed_dictionaries(
    {"query": st.one_of(STREAM_QUERIES, STREAM_QUERIES, st.text(max_size=60))},
    optional={
        "variables": st.one_of(JSON, st.fixed_dictionaries({"id": SCALARS})),
        "operationName": st.one_of(JSON, st.sampled_from(["A", "B"])),
        "extensions": JSON,
    },
)
STREAM_REQUESTS = st.one_of(STREAM_OPERATION, STREAM_OPERATION, STREAM_OPERATION, JSON)


@FUZZ
@given(
    body=STREAM_REQUESTS,
    accept=st.sampled_from(STREAMS),
    as_text=st.sampled_from([False, False, False, True]),
)
async def test_random_bodies_to_multipart_and_sse_never_get_a_5xx(
    api: GraphQL, log_offset: int, body: Any, accept: str, as_text: bool
) -> None:
    """Whatever the body, the answer is a 4xx or a stream that ends or keeps going cleanly:
    read for a moment (a subscription to every job never ends by itself), then leave."""
    content = json.dumps(body)
    if as_text:
        content = content[:-1] or "{"
    headers = {"accept": accept, "content-type": "application/json"}
    async with (
        httpx.AsyncClient(base_url=api.base_url, timeout=10) as http,
        http.stream("POST", "/graphql", content=content, headers=headers) as response,
    ):
        assert response.status_code < 500, await response.aread()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                async for _ in response.aiter_bytes():
                    pass


def test_after_the_fuzz_the_api_is_alive_and_logged_no_unhandled_error(
    api: GraphQL, data_dir: Path, log_offset: int
) -> None:
    assert api.process is not None and api.process.poll() is None, "the API process died"
    assert api.data("{ __typename }") == {"__typename": "Query"}
    with _api_log(api, data_dir).open() as log:
        log.seek(log_offset)
        assert "Traceback" not in log.read(), "the fuzz caused an unhandled exception"


@pytest.mark.parametrize("accept", ["application/json", "application/graphql-response+json"])
def test_a_subscription_sent_as_a_plain_post_is_refused_with_a_typed_code(
    api: GraphQL, data_dir: Path, accept: str
) -> None:
    """Found by this fuzz: it ran as a query, logged a traceback and answered
    INTERNAL_SERVER_ERROR. It is the client's error: no ``data``, ``BAD_REQUEST``, and the
    status each media type gives a request error (200 for application/json, else 400)."""
    offset = _api_log(api, data_dir).stat().st_size
    for method in ("POST", "GET"):
        query = "subscription { jobs { id } }"
        response = api.http.request(
            method,
            "/graphql",
            # A GET needs the preflight header past the CSRF guard, as Apollo sends it.
            headers={"accept": accept, "apollo-require-preflight": "1"},
            **({"json": {"query": query}} if method == "POST" else {"params": {"query": query}}),
        )
        assert response.status_code == (200 if accept == "application/json" else 400), response
        body = response.json()
        assert "data" not in body, body
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "BAD_REQUEST"
        assert "multipart/mixed or text/event-stream" in error["message"]
    assert api.data("{ __typename }") == {"__typename": "Query"}
    with _api_log(api, data_dir).open() as log:
        log.seek(offset)
        assert "Traceback" not in log.read()
