"""Live progress, measured: latency next to raw Redis pub/sub, and subscriptions per process.

1. Latency. A worker task reports progress stamped with the wall clock; a graphql-transport-ws
   client subscribed to ``job(id)`` notes when each report arrives. In the same run, raw
   redis-py asyncio PUBLISH -> SUBSCRIBE carries the same number of stamped messages at the
   same rate. Rounds alternate so drift on this shared machine hits both alike.
2. Capacity. K jobs wait (scheduled an hour ahead); K ``job(id)`` subscriptions, 100 per
   WebSocket, are opened against one API process; its RSS before and after gives the cost
   of one subscription.
3. CPU per delivered event (``make bench``'s P13). Under the fan-out load (N jobs, each
   reporting once a second), the API process's CPU time from just before the reports to
   the last delivery, divided by the events its clients received; beside it, the same for
   a minimal relay (``bench.baselines.relay``: one pub/sub reader, one WebSocket send per
   message) delivering the same jobs' events to the same kind of clients.

    .venv/bin/python -m bench.subscriptions --events 500 --rate 50 --subscriptions 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bench import auth
from bench.stack import ROOT, cpu_seconds, rss_kib, running_stack
from devtools.processes import free_port, stop_all
from tasks.core import records

WATCH = "subscription($id: ID!) { job(id: $id) { state progress { data } } }"
PER_CONNECTION = 100
# Reporters per worker process at P6/P7, and per worker on the raw side. One, waiting on
# each report's round trip to Valkey, sent well under its 5,000 a second at P7 on this
# shared machine (measured: 19-23 % of the reports within the window, the workers still
# sending 20 s later, the API and the client mostly idle): P7 measured the bench's rate.
FANOUT_SENDERS = 8


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        "n": len(ordered),
    }


async def raw_pubsub_latency(url: str, events: int, rate: float) -> list[float]:
    """One-way PUBLISH -> SUBSCRIBE latency with redis-py's asyncio client."""
    subscriber, publisher = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe("bench:raw")
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    latencies: list[float] = []

    async def receive() -> None:
        while len(latencies) < events:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                latencies.append(time.time() - float(message["data"]))

    receiver = asyncio.create_task(receive())
    start = time.monotonic()
    for n in range(1, events + 1):
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await publisher.publish("bench:raw", repr(time.time()))
    await asyncio.wait_for(receiver, 30)
    await pubsub.aclose()
    await subscriber.aclose()
    await publisher.aclose()
    return latencies


async def _graphql(http: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> Any:
    response = await http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=auth.headers()
    )
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def _open(base: str) -> ClientConnection:
    ws = await connect(
        base.replace("http", "ws") + "/graphql",
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        max_size=None,
        ping_interval=None,
        # Read the socket whatever the bench has yet to take: with websockets' default of
        # 16 frames, a socket of 100 snapshots stopped being read, missed uvicorn's
        # keep-alive ping and was closed after 40 s (found when P7 grew to 10,000).
        max_queue=None,
    )
    await ws.send(json.dumps({"type": "connection_init", "payload": auth.init_payload()}))
    assert json.loads(await ws.recv())["type"] == "connection_ack"
    return ws


async def jobql_latency(base: str, events: int, rate: float) -> list[float]:
    """Worker progress report -> graphql-transport-ws client, per event."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        data = await _graphql(
            http,
            'mutation($i: JSON!) { enqueue(task: "bench.tick", input: $i,'
            " options: {countdown: 1}) { id } }",
            {"i": {"ticks": events, "interval": 1 / rate}},
        )
    job_id = data["enqueue"]["id"]
    latencies: list[float] = []
    ws = await _open(base)
    payload = {"query": WATCH, "variables": {"id": job_id}}
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if message["type"] == "complete":
            break
        if message["type"] != "next":
            continue
        job = message["payload"]["data"]["job"]
        if job["progress"] and job["state"] == "PROGRESS":
            latencies.append(time.time() - job["progress"]["data"]["sentAt"])
    await ws.close()
    return latencies


async def _waiting_jobs(http: httpx.AsyncClient, count: int) -> list[str]:
    """``count`` jobs that stay PENDING (scheduled an hour ahead), created 100 per request."""
    ids: list[str] = []
    while len(ids) < count:
        batch = min(100, count - len(ids))
        inputs = ", ".join(f"{{data: {i}, delay: 0}}" for i in range(batch))
        data = await _graphql(
            http,
            f"mutation {{ processDataMany(inputs: [{inputs}], options: {{countdown: 3600}})"
            " { id } }",
            {},
        )
        ids += [job["id"] for job in data["processDataMany"]]
    return ids


async def _subscribe_all(base: str, ids: list[str]) -> list[ClientConnection]:
    """One job(id) subscription per id, 100 per WebSocket; returns once every snapshot came."""
    connections: list[ClientConnection] = []
    for offset in range(0, len(ids), PER_CONNECTION):
        ws = await _open(base)
        connections.append(ws)
        for n, job_id in enumerate(ids[offset : offset + PER_CONNECTION]):
            payload = {"query": WATCH, "variables": {"id": job_id}}
            await ws.send(json.dumps({"id": str(n), "type": "subscribe", "payload": payload}))
    for offset, ws in zip(range(0, len(ids), PER_CONNECTION), connections, strict=True):
        for _ in ids[offset : offset + PER_CONNECTION]:
            message = json.loads(await asyncio.wait_for(ws.recv(), 120))
            assert message["type"] == "next", message
    return connections


SAMPLE_EVERY = 0.05  # seconds between two readings of the serving process's CPU


class CpuWindow:
    """A serving process's CPU time while it delivers, and what its clients received.

    It runs from ``start()`` (just before the progress reports are asked for, so the two
    requests that ask count against the server) to the first reading after the last
    delivery, not to the drain's deadline: the idle seconds the drain waits out would
    otherwise be counted too. The readings come every ``SAMPLE_EVERY`` seconds.
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.delivered = 0
        self.last_delivery = 0.0
        self.readings: list[tuple[float, float]] = []  # (monotonic, CPU seconds)
        self._sampler: asyncio.Task[None] | None = None

    def _read(self) -> None:
        if self.pid is not None:
            self.readings.append((time.monotonic(), cpu_seconds(self.pid)))

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_EVERY)
            self._read()

    def start(self) -> None:
        self._read()
        self._sampler = asyncio.create_task(self._sample())

    def note_delivery(self) -> None:
        self.delivered += 1
        self.last_delivery = time.monotonic()

    async def stop(self) -> float:
        """The CPU seconds the process spent in the window (0 without a pid)."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self._read()
        if not self.readings:
            return 0.0
        end = next(cpu for at, cpu in self.readings if at >= self.last_delivery)
        return end - self.readings[0][1]


@dataclass
class Delivery:
    """One fan-out as its clients saw it: latency per progress event (where the message
    carries its send time), messages received, and the serving process's CPU meanwhile."""

    latencies: list[float] = field(default_factory=list)
    delivered: int = 0
    server_cpu_seconds: float = 0.0

    @property
    def cpu_us_per_message(self) -> float:
        return self.server_cpu_seconds / max(1, self.delivered) * 1e6


async def _report_progress(http: httpx.AsyncClient, ids: list[str], seconds: float) -> None:
    """Every job in ``ids`` reports progress once a second for ``seconds``, from two worker
    processes (``bench.fanout``), through the step a task's own progress report takes."""
    half = (len(ids) + 1) // 2
    for part in (ids[:half], ids[half:]):
        if part:
            await _graphql(
                http,
                'mutation($i: JSON!) { enqueue(task: "bench.fanout", input: $i) { id } }',
                {"i": {"jobIds": part, "seconds": seconds, "senders": FANOUT_SENDERS}},
            )


async def _drain(
    connections: list[ClientConnection],
    seconds: float,
    receive: Callable[[ClientConnection, str | bytes], Awaitable[None]],
) -> None:
    """Hand every frame to ``receive`` until the reports' window and 5 s more are over,
    then close every connection."""
    deadline = asyncio.get_running_loop().time() + seconds + 5

    async def drain(ws: ClientConnection) -> None:
        # One deadline per connection, not a wait_for per message (a task and a timer
        # each): the bench's own process shares the two cores with the API it measures.
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout_at(deadline):
                async for raw in ws:
                    await receive(ws, raw)

    await asyncio.gather(*(drain(ws) for ws in connections))
    # At once: each close may wait its close timeout for the server's answer.
    await asyncio.gather(*(ws.close() for ws in connections))


async def fanout_latency(
    base: str,
    count: int,
    seconds: float,
    api_pid: int | None = None,
    alongside: Callable[[float], Coroutine[Any, Any, object]] | None = None,
) -> Delivery:
    """``count`` subscriptions, each job reporting progress once a second from a worker.

    With ``api_pid``, the API process's CPU over the delivery (see ``CpuWindow``); with
    ``alongside``, a load run while the reports go out (it is given their seconds)."""
    window = CpuWindow(api_pid)
    delivery = Delivery()
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        ids = await _waiting_jobs(http, count)
        connections = await _subscribe_all(base, ids)
        load = asyncio.create_task(alongside(seconds)) if alongside else None
        window.start()
        await _report_progress(http, ids, seconds)

    async def receive(ws: ClientConnection, raw: str | bytes) -> None:
        message = json.loads(raw)
        if message["type"] == "next":
            window.note_delivery()
            progress = message["payload"]["data"]["job"]["progress"]
            if progress:
                delivery.latencies.append(time.time() - progress["data"]["sentAt"])
        elif message["type"] == "ping":  # graphql-transport-ws: answered at once
            await ws.send('{"type":"pong"}')

    await _drain(connections, seconds, receive)
    delivery.server_cpu_seconds = await window.stop()
    delivery.delivered = window.delivered
    if load is not None:
        await load
    return delivery


async def relay_fanout(base: str, relay: RelayProcess, count: int, seconds: float) -> Delivery:
    """P13's baseline: the same jobs, reports and clients (100 jobs a WebSocket), each job's
    events delivered by the minimal relay (``bench.baselines.relay``) instead of the API."""
    window = CpuWindow(relay.process.pid)

    async def receive(_: ClientConnection, __: str | bytes) -> None:
        window.note_delivery()

    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        ids = await _waiting_jobs(http, count)
        connections = []
        for offset in range(0, len(ids), PER_CONNECTION):
            ws = await connect(
                f"ws://127.0.0.1:{relay.port}", max_size=None, ping_interval=None, max_queue=None
            )
            channels = [records.job_channel(job) for job in ids[offset : offset + PER_CONNECTION]]
            await ws.send(json.dumps(channels))
            connections.append(ws)
        for ws in connections:
            assert await asyncio.wait_for(ws.recv(), 120) == "ready"
        window.start()
        await _report_progress(http, ids, seconds)
    await _drain(connections, seconds, receive)
    return Delivery(delivered=window.delivered, server_cpu_seconds=await window.stop())


class RelayProcess:
    """``bench.baselines.relay`` in a process of its own, so its CPU is its own."""

    def __init__(self, redis_url: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.baselines.relay", redis_url, str(self.port)],
            cwd=ROOT, stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == b"ready"

    def stop(self) -> None:
        stop_all([self.process])


async def raw_fanout_latency(url: str, count: int, seconds: float) -> list[float]:
    """The same load on raw redis-py: ``count`` channels, one message each per second, all
    received on one subscribing connection, as JobQL's API receives them."""
    subscriber, publisher = aioredis.Redis.from_url(url), aioredis.Redis.from_url(url)
    pubsub = subscriber.pubsub()
    channels = [f"bench:fan:{n}" for n in range(count)]
    for offset in range(0, count, 500):
        await pubsub.subscribe(*channels[offset : offset + 500])
    confirmed = 0
    while confirmed < count:
        message = await pubsub.get_message(timeout=5)
        confirmed += message is not None and message["type"] == "subscribe"
    latencies: list[float] = []
    expected = count * int(seconds)

    async def receive() -> None:
        while len(latencies) < expected:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is None:
                return
            latencies.append(time.time() - float(message["data"]))

    receiver = asyncio.create_task(receive())
    start = time.monotonic()

    senders = 2 * FANOUT_SENDERS  # the reporters of both of the JobQL side's workers

    async def publish(first: int) -> None:
        for second in range(int(seconds)):
            for n in range(first, count, senders):
                await asyncio.sleep(max(0.0, start + second + n / count - time.monotonic()))
                await publisher.publish(channels[n], repr(time.time()))

    await asyncio.gather(*(publish(first) for first in range(senders)))
    await asyncio.wait_for(receiver, 30)
    await pubsub.aclose()
    await subscriber.aclose()
    await publisher.aclose()
    return latencies


async def capacity(base: str, pid: int, count: int) -> dict[str, Any]:
    """Hold ``count`` job(id) subscriptions on one API process; report RSS per subscription."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        ids = await _waiting_jobs(http, count)
        await asyncio.sleep(1)
        before = rss_kib(pid)
        started = time.monotonic()
        connections = await _subscribe_all(base, ids)
        opened_in = time.monotonic() - started
        await asyncio.sleep(1)
        after = rss_kib(pid)
        stats = (await http.get("/health/stats")).json()
        await asyncio.gather(*(ws.close() for ws in connections))
    return {
        "subscriptions": len(ids),
        "channels_held": stats["channels"],
        "opened_in_s": round(opened_in, 1),
        "api_rss_mib_before": round(before / 1024, 1),
        "api_rss_mib_after": round(after / 1024, 1),
        "rss_kib_per_subscription": round((after - before) / max(1, len(ids)), 2),
    }


async def measure(args: argparse.Namespace, base: str, pid: int, url: str) -> dict[str, Any]:
    raw: list[float] = []
    jobql: list[float] = []
    for _ in range(args.rounds):
        raw += await raw_pubsub_latency(url, args.events, args.rate)
        jobql += await jobql_latency(base, args.events, args.rate)
    result: dict[str, Any] = {
        "events_per_round": args.events,
        "rate_per_s": args.rate,
        "rounds": args.rounds,
        "raw_redis_pubsub": percentiles(raw),
        "jobql_progress_to_client": percentiles(jobql),
    }
    result["ratio_p50"] = round(statistics.median(jobql) / statistics.median(raw), 2)
    result["ratio_p99"] = round(
        result["jobql_progress_to_client"]["p99_ms"] / result["raw_redis_pubsub"]["p99_ms"], 2
    )
    if args.subscriptions:
        result["capacity"] = await capacity(base, pid, args.subscriptions)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    args = parser.parse_args()

    modules = '["tasks.examples", "bench.tasks"]'
    with running_stack(worker=True, task_modules=modules, queues=("bench",)) as stack:
        time.sleep(3)  # let the worker come up
        result = asyncio.run(measure(args, stack.base_url, stack.api.pid, stack.valkey.url))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
