"""Live progress under strain: Redis restarts, slow clients, many replicas, many watchers.

These tests get a stack of their own (Valkey, worker, two API replicas), so restarting
Redis here cannot disturb the rest of the suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis
from websockets.exceptions import ConnectionClosed

from devtools.valkey import EmbeddedValkey
from tasks.core import records
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, running_api, running_worker, service_env
from tests.live.test_subscriptions import WATCH, _assert_well_ordered, _report
from tests.support.clients import (
    Stream,
    Transport,
    graphql_transport_ws,
    receive,
    send,
    sse,
    websocket,
)

pytestmark = [pytest.mark.slow, pytest.mark.contract, pytest.mark.rabbitmq]


@dataclass(frozen=True)
class Services:
    valkey: EmbeddedValkey
    a_url: str
    b_url: str


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("live")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_KEEP_ALIVE_INTERVAL="0.5",
        JOBQL_CONNECTION_INIT_TIMEOUT="1",
        JOBQL_SUBSCRIBER_QUEUE_LIMIT="32",
    )
    settings = Settings(redis_url=valkey.url)
    try:
        with (
            running_worker(env, data_dir, settings),
            running_api(env, data_dir) as a,
            running_api(env, data_dir) as b,
        ):
            yield Services(valkey, a.base_url, b.base_url)
    finally:
        valkey.stop()


@dataclass(frozen=True)
class Stack:
    """The module's services, through clients on this test's event loop."""

    valkey: EmbeddedValkey
    a: AsyncGraphQL
    b: AsyncGraphQL

    async def stats(self, api: AsyncGraphQL) -> dict[str, Any]:
        return (await api.http.get("/health/stats")).json()


@pytest.fixture
async def stack(services: Services) -> AsyncIterator[Stack]:
    async with AsyncGraphQL(services.a_url) as a, AsyncGraphQL(services.b_url) as b:
        yield Stack(services.valkey, a, b)


async def _watch_until_progress(
    client: Transport, base_url: str, job_id: str
) -> asyncio.Task[Stream]:
    """Watch ``job_id`` in the background; return once its first progress report arrived."""
    seen_progress = asyncio.Event()

    def on_result(result: dict[str, Any]) -> None:
        if result["data"]["job"]["progress"]:
            seen_progress.set()

    watch = asyncio.create_task(
        client(base_url, WATCH, {"id": job_id}, within=90, on_result=on_result)
    )
    try:
        await asyncio.wait_for(seen_progress.wait(), 30)
    except TimeoutError:
        watch.cancel()
        pytest.fail("progress never arrived")
    return watch


async def test_a_job_enqueued_on_one_replica_is_watched_live_on_another(stack: Stack) -> None:
    job_id = await _report(stack.a, steps=10, delay=0.05, countdown=0.3)

    stream = await graphql_transport_ws(stack.b.base_url, WATCH, {"id": job_id})

    assert stream.completed
    assert [j["state"] for j in stream.jobs][:2] == ["PENDING", "STARTED"]
    assert stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)


async def test_a_redis_restart_mid_stream_loses_no_state_change(stack: Stack) -> None:
    job_id = await _report(stack.a, steps=60, delay=0.05)
    watch = await _watch_until_progress(graphql_transport_ws, stack.b.base_url, job_id)

    await asyncio.to_thread(stack.valkey.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(stack.valkey.start)

    stream = await asyncio.wait_for(watch, 90)
    assert stream.completed and not stream.errors, stream.errors
    assert stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)
    assert (await stack.a.wait_done(job_id))["state"] == "SUCCESS", "the job itself completes"
    assert (await stack.stats(stack.b))["reconnects"] >= 1


async def _slow_socket(base_url: str) -> socket.socket:
    """A client socket with a small receive window, as a phone on a poor link has."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = base_url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


async def test_a_killed_pubsub_connection_heals_without_losing_the_end(stack: Stack) -> None:
    job_id = await _report(stack.a, steps=40, delay=0.05)
    watch = await _watch_until_progress(sse, stack.a.base_url, job_id)
    client = aioredis.Redis.from_url(stack.valkey.url)
    assert await client.client_kill_filter(_type="pubsub") >= 1  # what Redis does to a slow reader
    await client.aclose()

    stream = await asyncio.wait_for(watch, 60)
    assert stream.completed and stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)


async def test_a_slow_consumer_gets_every_state_change_and_does_not_slow_others(
    stack: Stack,
) -> None:
    job_id = await _report(stack.a, steps=1000, delay=0.004, countdown=1)
    fast_watch = asyncio.create_task(graphql_transport_ws(stack.a.base_url, WATCH, {"id": job_id}))
    states: list[str] = []
    high_water = 0
    async with websocket(
        stack.a.base_url,
        "graphql-transport-ws",
        sock=await _slow_socket(stack.a.base_url),
        compression=None,
        max_queue=1,
        ping_interval=None,
    ) as ws:
        await send(ws, {"type": "connection_init"})
        assert (await asyncio.wait_for(receive(ws), 10))["type"] == "connection_ack"
        payload = {"query": WATCH, "variables": {"id": job_id}}
        await send(ws, {"id": "slow", "type": "subscribe", "payload": payload})
        # One message a second until the fast subscriber has its end (however long a
        # loaded machine makes the job), then it catches up.
        slow_until = time.monotonic() + 90
        fast_done_while_slow = False
        while True:
            message = await asyncio.wait_for(receive(ws), 60)
            if message["type"] == "complete":
                break
            if message["type"] != "next":
                continue  # the server's keep-alive pings
            states.append(message["payload"]["data"]["job"]["state"])
            if time.monotonic() < slow_until and not fast_done_while_slow:
                high_water = max(high_water, (await stack.stats(stack.a))["pending_events"])
                fast_done_while_slow = fast_watch.done() and states[-1] != "SUCCESS"
                await asyncio.sleep(1)

    fast = await asyncio.wait_for(fast_watch, 60)
    assert fast.completed and fast.jobs[-1]["state"] == "SUCCESS"
    assert fast_done_while_slow, "the fast subscriber finished while the slow one lagged"
    assert len(fast.jobs) > 100, "the fast subscriber saw progress as it happened"
    assert states[:2] == ["PENDING", "STARTED"] and states[-1] == "SUCCESS"
    if (await stack.stats(stack.a))["fast_paths"]["bounded_sockets"]["active"]:
        # Stock uvicorn lets the kernel buffer megabytes: the backlog parks there instead.
        assert len(states) < 800, "progress for a slow consumer is coalesced, latest wins"
    assert high_water <= 32, "what the server holds for a slow subscriber stays bounded"


async def test_two_hundred_subscriptions_leave_nothing_behind(stack: Stack) -> None:
    before = await stack.stats(stack.a)
    finished = [await _report(stack.a, steps=1, delay=0) for _ in range(4)]
    for job_id in finished:
        await stack.a.wait_done(job_id)
    running = await _report(stack.a, steps=400, delay=0.05)

    for i in range(200):
        # Half read to completion; half vanish mid-stream without a word.
        if i % 2 == 0:
            watched = await graphql_transport_ws(stack.a.base_url, WATCH, {"id": finished[i % 4]})
            assert watched.completed
        else:
            ws = await websocket(stack.a.base_url, "graphql-transport-ws")
            await send(ws, {"type": "connection_init"})
            await asyncio.wait_for(ws.recv(), 10)
            payload = {"query": WATCH, "variables": {"id": running}}
            await send(ws, {"id": str(i), "type": "subscribe", "payload": payload})
            await asyncio.wait_for(ws.recv(), 10)
            ws.transport.abort()  # the client vanishes

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = await stack.stats(stack.a)
        if after["channels"] == 0 and after["tasks"] <= before["tasks"]:
            break
        await asyncio.sleep(0.1)
    assert after["channels"] == 0 and after["subscribers"] == 0 and after["locks"] == 0
    assert after["tasks"] <= before["tasks"], (before, after)
    client = aioredis.Redis.from_url(stack.valkey.url)
    channel = records.job_channel(running)
    assert await client.pubsub_numsub(channel) == [(channel.encode(), 0)]
    await client.aclose()
    await stack.a.data(
        "mutation($id: ID!) { cancelJob(id: $id, terminate: true) { id } }", {"id": running}
    )


async def test_the_jobs_stream_sends_every_change_of_matching_jobs(stack: Stack) -> None:
    query = 'subscription { jobs(filter: {task: "process_data"}) { id task state sequence } }'
    results: list[dict[str, Any]] = []
    ready = asyncio.Event()

    async def watch() -> None:
        async with websocket(stack.b.base_url, "graphql-transport-ws") as ws:
            await send(ws, {"type": "connection_init"})
            await asyncio.wait_for(ws.recv(), 10)
            await send(ws, {"id": "1", "type": "subscribe", "payload": {"query": query}})
            ready.set()
            with contextlib.suppress(TimeoutError):  # the assertions below say what was missed
                async with asyncio.timeout(30):
                    while sum(r["state"] == "SUCCESS" for r in results) < 2:
                        message = await receive(ws)
                        if message["type"] == "next":
                            results.append(message["payload"]["data"]["jobs"])

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.sleep(0.3)
    mutation = "mutation { processData(input: {data: 1, delay: 0.2}) { id } }"
    ids = [(await stack.a.data(mutation))["processData"]["id"] for _ in range(2)]
    await _report(stack.a, steps=1, delay=0)  # another task: filtered out on the server
    await watcher

    assert {r["task"] for r in results} == {"process_data"}
    for job_id in ids:
        states = [r["state"] for r in results if r["id"] == job_id]
        assert states == ["PENDING", "STARTED", "SUCCESS"], states
        sequences = [r["sequence"] for r in results if r["id"] == job_id]
        assert sequences == sorted(set(sequences))


async def test_keep_alive_pings_and_the_connection_init_timeout(stack: Stack) -> None:
    job_id = await _report(stack.a, steps=20, delay=0.1)
    assert (await graphql_transport_ws(stack.a.base_url, WATCH, {"id": job_id})).pings >= 2
    assert (await sse(stack.a.base_url, WATCH, {"id": job_id})).completed

    async with websocket(stack.a.base_url, "graphql-transport-ws") as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)  # never send connection_init
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4408


async def test_health_reports_the_broadcast_connection(stack: Stack) -> None:
    health = (await stack.a.data("{ health { broadcast { ok } } }"))["health"]
    assert health["broadcast"]["ok"] is True
