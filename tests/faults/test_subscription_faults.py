"""Subscribers under faults and strain: nobody misses a state change or the end.

A stack of this module's own (Valkey, a worker, two API replicas), so killing Redis's
pub/sub clients or a replica cannot disturb the rest of the suite. Every scenario ends with
its ledger (``tests.support.ledger``): each job reached a terminal state and each subscriber got it
(or was closed with an explicit code). ``make test`` runs each at its smallest size,
``make reliability`` at full size.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, GraphQL, running_api, running_worker, service_env
from tests.live.test_subscriptions import WATCH, _assert_well_ordered, _report
from tests.support.clients import (
    LEGACY_WS,
    TRANSPORT_WS,
    TRANSPORTS,
    Stream,
    receive,
    resubscribing,
    send,
    websocket,
)
from tests.support.footprint import back_to, footprint, numsub, rss_mb, stats
from tests.support.ledger import Ledger, scale
from tests.support.proxy import LoopbackProxy

pytestmark = pytest.mark.slow

QUEUE_LIMIT = 32
STATE_ORDER = ["PENDING", "STARTED", "SUCCESS"]


@dataclass(frozen=True)
class Services:
    valkey: EmbeddedValkey
    a: GraphQL
    b: GraphQL
    env: dict[str, str]
    data_dir: Path


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("subscription-faults")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_KEEP_ALIVE_INTERVAL="1",
        JOBQL_SUBSCRIBER_QUEUE_LIMIT=str(QUEUE_LIMIT),
        JOBQL_MAX_SUBSCRIPTIONS_PER_OWNER="5000",
    )
    settings = Settings(redis_url=valkey.url)
    try:
        with (
            running_worker(env, data_dir, settings, concurrency=4),
            running_api(env, data_dir) as a,
            running_api(env, data_dir) as b,
        ):
            yield Services(valkey, a, b, env, data_dir)
    finally:
        valkey.stop()


@pytest.fixture
async def api(services: Services) -> AsyncIterator[AsyncGraphQL]:
    async with AsyncGraphQL(services.a.base_url) as client:
        yield client


def _ended(stream: Stream) -> bool:
    """The subscriber got the job's final state and the server completed the stream."""
    return stream.completed and bool(stream.jobs) and stream.jobs[-1]["done"]


def _states(stream: Stream) -> list[str]:
    """The states a subscriber saw, each change once (progress reports collapse)."""
    states: list[str] = []
    for job in stream.jobs:
        if job["state"] != "PROGRESS" and (not states or states[-1] != job["state"]):
            states.append(job["state"])
    return states


async def _settle(ledger: Ledger, api: AsyncGraphQL, job_ids: Sequence[str]) -> None:
    ledger.submitted += len(job_ids)
    for job_id in job_ids:
        ledger.terminal[(await api.wait_done(job_id, within=120))["state"]] += 1


def _count(ledger: Ledger, streams: Sequence[Stream]) -> None:
    ledger.subscribers += len(streams)
    ledger.subscribers_ended += sum(_ended(stream) for stream in streams)


async def _all_seen(events: Sequence[asyncio.Event], within: float = 60) -> None:
    async with asyncio.timeout(within):
        for event in events:
            await event.wait()


def _watchers(
    urls: Sequence[str], job_ids: Sequence[str], count: int, within: float = 120
) -> tuple[list[asyncio.Task[Stream]], list[asyncio.Event]]:
    """``count`` subscribers spread over the jobs, the replicas and the four transports;
    each event is set once its subscriber has its first snapshot."""
    tasks, seen = [], []
    names = list(TRANSPORTS)
    for i in range(count):
        event = asyncio.Event()
        client = TRANSPORTS[names[i % len(names)]]
        watch = client(
            urls[i % len(urls)],
            WATCH,
            {"id": job_ids[i % len(job_ids)]},
            within=within,
            on_result=lambda _, e=event: e.set(),
        )
        tasks.append(asyncio.create_task(watch))
        seen.append(event)
    return tasks, seen


@pytest.mark.timeout(600)
async def test_client_kill_type_pubsub_under_live_subscriptions(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    """What Redis does to a pub/sub reader past its output buffer: every replica's reader
    reconnects, resubscribes and tells its subscribers to re-read their snapshots."""
    subscribers = scale(50, 500)
    jobs = [await _report(api, steps=60, delay=0.05, countdown=2) for _ in range(scale(5, 25))]
    urls = [services.a.base_url, services.b.base_url]
    before = [(await stats(url))["reconnects"] for url in urls]
    watches, seen = _watchers(urls, jobs, subscribers)
    await _all_seen(seen, within=120)

    client = aioredis.Redis.from_url(services.valkey.url)
    try:
        killed = await client.client_kill_filter(_type="pubsub")
    finally:
        await client.aclose()

    streams = await asyncio.gather(*watches)
    assert killed >= 2, "each replica's pub/sub connection was killed"
    for url, reconnects in zip(urls, before, strict=True):
        assert (await stats(url))["reconnects"] > reconnects, f"{url} never reconnected"
    for stream in streams:
        assert not stream.errors, stream.errors
        assert _ended(stream) and stream.jobs[-1]["state"] == "SUCCESS"
        _assert_well_ordered(stream.jobs)
    _count(ledger, streams)
    await _settle(ledger, api, jobs)
    ledger.notes.append(f"{killed} pub/sub connections killed")
    ledger.settle()


@pytest.mark.timeout(600)
async def test_an_event_burst_loses_no_state_change(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    """Progress as fast as a worker can report it: state changes all arrive, in order;
    progress may be coalesced (latest wins), and what arrived is counted."""
    steps, job_count = scale(5_000, 10_000), scale(1, 5)
    jobs = [await _report(api, steps=steps, delay=0, countdown=2) for _ in range(job_count)]
    urls = [services.a.base_url, services.b.base_url]
    watches, seen = _watchers(urls, jobs, 4 * job_count)  # each transport on each job
    await _all_seen(seen)
    before = sum([(await stats(url))["events_coalesced"] for url in urls])

    streams = await asyncio.gather(*watches)

    for stream in streams:
        assert not stream.errors, stream.errors
        assert _states(stream) == STATE_ORDER, _states(stream)
        assert stream.jobs[-1]["progress"]["current"] == steps, "the last progress is kept"
        _assert_well_ordered(stream.jobs)
    progress = sum(sum(j["state"] == "PROGRESS" for j in s.jobs) for s in streams)
    coalesced = sum([(await stats(url))["events_coalesced"] for url in urls]) - before
    _count(ledger, streams)
    await _settle(ledger, api, jobs)
    ledger.notes.append(
        f"{steps * job_count} progress events; {progress} delivered over "
        f"{len(streams)} subscribers, {coalesced} coalesced in the server's queues"
    )
    ledger.settle()


Finish = Callable[[], Awaitable[Stream]]


async def _small_window(base_url: str) -> socket.socket:
    """A connected socket with a small receive window, as a phone on a poor link has."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    host, port = base_url.removeprefix("http://").split(":")
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


async def _stopped_reader(transport: str, base_url: str, job_id: str) -> Finish:
    """A subscriber that reads nothing more once subscribed (a small receive window, and
    a client that stops taking bytes from it); what it returns reads the rest later."""
    if transport == "graphql-transport-ws":
        return await _stopped_websocket(base_url, job_id)
    return await _stopped_stream(transport, base_url, job_id)


async def _stopped_websocket(base_url: str, job_id: str) -> Finish:
    ws = await websocket(
        base_url,
        TRANSPORT_WS.subprotocol,
        sock=await _small_window(base_url),
        compression=None,
        max_queue=1,
        ping_interval=None,
    )
    await send(ws, {"type": "connection_init"})
    assert (await asyncio.wait_for(receive(ws), 10))["type"] == "connection_ack"
    payload = {"query": WATCH, "variables": {"id": job_id}}
    await send(ws, {"id": "1", "type": "subscribe", "payload": payload})

    async def finish() -> Stream:
        stream = Stream()
        async with asyncio.timeout(120):
            while not stream.completed:
                message = await receive(ws)
                if message["type"] == "next":
                    stream.add(message["payload"], None)
                elif message["type"] == "complete":
                    stream.completed = True
                elif message["type"] == "ping":
                    await send(ws, {"type": "pong"})
        await ws.close()
        return stream

    return finish


async def _stopped_stream(transport: str, base_url: str, job_id: str) -> Finish:
    """A multipart or SSE subscription on a raw socket: its buffer is small too."""
    accept = {"multipart": 'multipart/mixed;subscriptionSpec="1.0"', "sse": "text/event-stream"}
    reader, writer = await asyncio.open_connection(sock=await _small_window(base_url), limit=4096)
    body = json.dumps({"query": WATCH, "variables": {"id": job_id}}).encode()
    writer.write(
        f"POST /graphql HTTP/1.1\r\nHost: {base_url.removeprefix('http://')}\r\n"
        f"Content-Type: application/json\r\nAccept: {accept[transport]}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 200 " in head.split(b"\r\n")[0] and b"chunked" in head.lower(), head

    async def finish() -> Stream:
        text = bytearray()
        async with asyncio.timeout(120):
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                text += await reader.readexactly(size)
                await reader.readexactly(2)
        writer.close()
        return _parse(transport, text.decode())

    return finish


def _parse(transport: str, text: str) -> Stream:
    """A whole multipart or SSE answer, as ``tests.support.clients`` reads one as it comes."""
    stream = Stream()
    if transport == "multipart":
        *parts, tail = text.split("\r\n--graphql")
        for part in parts:
            if "\r\n\r\n" in part:
                body = json.loads(part.split("\r\n\r\n", 1)[1])
                if body and "payload" in body:
                    stream.add(body["payload"], None)
        stream.completed = tail.startswith("--")
        return stream
    for event in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in event.splitlines() if ": " in line)
        if fields.get("event") == "next":
            stream.add(json.loads(fields["data"]), None)
        elif fields.get("event") == "complete":
            stream.completed = True
    return stream


@pytest.mark.timeout(600)
async def test_clients_that_stop_reading_hold_bounded_memory_and_stall_nobody(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    stopped_count = scale(10, 100)
    steps = 3000
    job_id = await _report(api, steps=steps, delay=0.002, countdown=2)
    url, pid = services.a.base_url, services.a.process.pid  # type: ignore[union-attr]
    baseline = await footprint(url, pid)
    kinds = ("graphql-transport-ws", "multipart", "sse")
    stopped = [await _stopped_reader(kinds[i % 3], url, job_id) for i in range(stopped_count)]
    live, seen = _watchers([url], [job_id], 2)
    await _all_seen(seen)

    high_water, peak_rss = 0, baseline.rss_mb
    while not all(watch.done() for watch in live):
        await asyncio.sleep(0.2)
        high_water = max(high_water, (await stats(url))["pending_events"])
        peak_rss = max(peak_rss, rss_mb(pid))
    live_done = datetime.now(UTC)
    live_streams = [await watch for watch in live]
    finished = datetime.fromisoformat((await api.wait_done(job_id, within=60))["finishedAt"])

    ended = await asyncio.gather(*(finish() for finish in stopped))

    for stream in live_streams:
        assert _ended(stream) and _states(stream) == STATE_ORDER
        assert sum(j["state"] == "PROGRESS" for j in stream.jobs) > 100, "live ones kept up"
    # The live ones got the end as it happened, while the stopped ones still read nothing.
    assert (live_done - finished).total_seconds() < 3, (live_done, finished)
    # Each stopped reader's backlog in the server stays within its queue's bound.
    assert high_water <= stopped_count * QUEUE_LIMIT + 2 * QUEUE_LIMIT, high_water
    assert peak_rss - baseline.rss_mb < 64, f"memory grew {peak_rss - baseline.rss_mb:.0f} MB"
    progress = [sum(j["state"] == "PROGRESS" for j in s.jobs) for s in ended]
    for stream in ended:
        assert _ended(stream) and stream.jobs[-1]["state"] == "SUCCESS"
        assert "STARTED" in _states(stream), _states(stream)
    most = {kind: max(progress[i::3]) for i, kind in enumerate(kinds)}
    assert max(most.values()) < steps / 2, f"stopped readers' progress is coalesced: {most}"
    _count(ledger, [*live_streams, *ended])
    await _settle(ledger, api, [job_id])
    ledger.notes.append(
        f"pending events peak {high_water} (bound {QUEUE_LIMIT} per subscriber); "
        f"RSS +{peak_rss - baseline.rss_mb:.1f} MB; a stopped reader got at most "
        f"{max(progress)} of {steps} progress reports ({most})"
    )
    ledger.settle()


@pytest.mark.timeout(600)
async def test_subscribing_after_completion_gets_the_final_snapshot_and_completes(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    jobs = [await _report(api, steps=1, delay=0) for _ in range(5)]
    finals = {job_id: await api.wait_done(job_id) for job_id in jobs}
    urls = [services.a.base_url, services.b.base_url]
    names = list(TRANSPORTS)
    at_once = asyncio.Semaphore(50)

    async def late(i: int) -> Stream:
        async with at_once:
            job_id = jobs[i % len(jobs)]
            client = TRANSPORTS[names[i % len(names)]]
            return await client(urls[i % 2], WATCH, {"id": job_id}, within=60)

    streams = await asyncio.gather(*(late(i) for i in range(scale(50, 1000))))

    for i, stream in enumerate(streams):
        final = finals[jobs[i % len(jobs)]]
        assert stream.completed and not stream.errors, stream.errors
        assert [j["sequence"] for j in stream.jobs] == [final["sequence"]]
        assert stream.jobs[0]["state"] == "SUCCESS"
    _count(ledger, streams)
    await _settle(ledger, api, jobs)
    ledger.settle()


@pytest.mark.timeout(600)
async def test_many_subscribers_on_one_job_all_see_every_state_change(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    # It starts once all have subscribed: each must see every state change after PENDING.
    job_id = await _report(api, steps=20, delay=0.05, countdown=scale(3, 8))
    urls = [services.a.base_url, services.b.base_url]
    watches, seen = _watchers(urls, [job_id], scale(50, 200))
    await _all_seen(seen)
    assert (await api.job(job_id))["state"] == "PENDING", "everyone subscribed before it ran"

    streams = await asyncio.gather(*watches)

    final = await api.wait_done(job_id)
    for stream in streams:
        assert not stream.errors, stream.errors
        assert _states(stream) == STATE_ORDER, _states(stream)
        assert stream.jobs[-1]["sequence"] == final["sequence"]
        _assert_well_ordered(stream.jobs)
    _count(ledger, streams)
    await _settle(ledger, api, [job_id])
    ledger.settle()


@pytest.mark.timeout(600)
async def test_sequential_subscribe_and_leave_cycles_leave_nothing_behind(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    """On one connection of each WebSocket protocol: subscribe, get the snapshot, leave
    (``complete`` or ``stop``); then the connections close. Nothing may stay behind."""
    cycles = scale(100, 1000)
    running = await _report(api, steps=10_000, delay=0.05)
    await api.wait(running, lambda job: job["state"] == "PROGRESS")
    url, pid = services.a.base_url, services.a.process.pid  # type: ignore[union-attr]
    baseline = await footprint(url, pid)
    snapshots = 0
    async with (
        websocket(url, TRANSPORT_WS.subprotocol) as modern,
        websocket(url, LEGACY_WS.subprotocol) as legacy,
    ):
        for ws in (modern, legacy):
            await send(ws, {"type": "connection_init"})
            assert (await asyncio.wait_for(receive(ws), 10))["type"] == "connection_ack"
        for i in range(cycles):
            ws, protocol = (modern, TRANSPORT_WS) if i % 2 == 0 else (legacy, LEGACY_WS)
            payload = {"query": WATCH, "variables": {"id": running}}
            await send(ws, {"id": str(i), "type": protocol.start, "payload": payload})
            while True:
                message = await asyncio.wait_for(receive(ws), 10)
                if message["type"] == protocol.data and message["id"] == str(i):
                    snapshots += 1
                    break
            await send(ws, {"id": str(i), "type": "complete" if ws is modern else "stop"})
        during = await stats(url)
    after = await back_to(baseline, url, pid)

    assert snapshots == cycles
    assert during["subscribers"] <= baseline.subscribers + 2, "left subscriptions linger"
    assert after.holds_no_more_than(baseline), (baseline, after)
    assert await numsub(services.valkey.url, [running]) == 0
    await api.data(
        "mutation($id: ID!) { cancelJob(id: $id, terminate: true) { id } }", {"id": running}
    )
    # Each left by its client, and the server ended it at once: none is left hanging.
    ledger.subscribers = ledger.subscribers_closed = cycles
    await _settle(ledger, api, [running])
    ledger.notes.append(
        f"tasks {baseline.tasks}->{after.tasks}, fds {baseline.fds}->{after.fds}, "
        f"subscribers {baseline.subscribers}->{after.subscribers}, NUMSUB 0 "
        "(closed = left by the client)"
    )
    ledger.settle()


@pytest.mark.timeout(600)
async def test_a_dropped_connection_resubscribes_and_gets_the_snapshot_then_the_end(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    proxy = LoopbackProxy(int(services.a.base_url.rsplit(":", 1)[1])).start()
    try:
        clients = scale(6, 60)
        jobs = [await _report(api, steps=80, delay=0.05, countdown=1) for _ in range(3)]
        via_proxy = [f"http://127.0.0.1:{proxy.port}"]
        progressed = [asyncio.Event() for _ in range(clients)]

        def on_result(event: asyncio.Event) -> Any:
            return lambda result: result["data"]["job"]["progress"] and event.set()

        watches = [
            asyncio.create_task(
                resubscribing(
                    via_proxy,
                    WATCH,
                    {"id": jobs[i % len(jobs)]},
                    on_result=on_result(progressed[i]),
                    protocol=(TRANSPORT_WS, LEGACY_WS)[i % 2],
                )
            )
            for i in range(clients)
        ]
        await _all_seen(progressed)
        await asyncio.to_thread(proxy.set_mode, "forward")  # every TCP connection cut

        streams = await asyncio.gather(*watches)
    finally:
        proxy.stop()

    for stream in streams:
        assert len(stream.starts) >= 2, "the client connected again"
        assert _ended(stream) and stream.jobs[-1]["state"] == "SUCCESS"
        _assert_resumed(stream)
        assert _states(stream)[-2:] == ["STARTED", "SUCCESS"]
    _count(ledger, streams)
    await _settle(ledger, api, jobs)
    ledger.notes.append(f"{clients} connections cut mid-job")
    ledger.settle()


@pytest.mark.timeout(600)
async def test_clients_of_a_killed_replica_reconnect_to_another_and_get_the_end(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    clients = scale(10, 100)
    with running_api(services.env, services.data_dir) as doomed:
        # Enqueued once the replica is up (its start can take seconds on a busy machine), and
        # long enough to still run when it is killed.
        jobs = [await _report(api, steps=80, delay=0.1, countdown=1) for _ in range(4)]
        progressed = [asyncio.Event() for _ in range(clients)]
        watches = [
            asyncio.create_task(
                resubscribing(
                    [doomed.base_url, services.b.base_url],
                    WATCH,
                    {"id": jobs[i % len(jobs)]},
                    on_result=lambda r, e=progressed[i]: r["data"]["job"]["progress"] and e.set(),
                    protocol=(TRANSPORT_WS, LEGACY_WS)[i % 2],
                )
            )
            for i in range(clients)
        ]
        await _all_seen(progressed)
        assert doomed.process is not None
        os.kill(doomed.process.pid, signal.SIGKILL)

        streams = await asyncio.gather(*watches)

    for stream in streams:
        assert len(stream.starts) >= 2, "the client reconnected to the other replica"
        assert _ended(stream) and stream.jobs[-1]["state"] == "SUCCESS"
        _assert_resumed(stream)
    _count(ledger, streams)
    await _settle(ledger, api, jobs)
    ledger.settle()


def _assert_resumed(stream: Stream) -> None:
    """After each reconnect the first message is a snapshot no older than the last seen."""
    for start in stream.starts[1:]:
        if 0 < start < len(stream.results):
            seen = stream.results[start - 1]["data"]["job"]["sequence"]
            assert stream.results[start]["data"]["job"]["sequence"] >= seen
