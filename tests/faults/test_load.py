"""Load: many jobs each with a subscriber, and many subscribers coming and going.

A stack of this module's own: Valkey, two workers and an API. ``make test`` runs each
scenario at its smallest size, ``make reliability`` at full size; each ends with its ledger.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, GraphQL, running_api, running_worker, service_env
from tests.live.test_subscriptions import WATCH, _report
from tests.support.clients import (
    LEGACY_WS,
    TRANSPORT_WS,
    TRANSPORTS,
    Stream,
    receive,
    send,
    websocket,
)
from tests.support.footprint import back_to, footprint, numsub
from tests.support.ledger import Ledger, scale

pytestmark = pytest.mark.slow

ENQUEUE = "mutation($i: ProcessDataInput!) { processData(input: $i) { id } }"
WORKER_OF = "query($id: ID!) { job(id: $id) { state worker createdAt startedAt finishedAt } }"


@dataclass(frozen=True)
class Services:
    valkey: EmbeddedValkey
    api: GraphQL


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("load")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(valkey.url, data_dir, JOBQL_MAX_SUBSCRIPTIONS_PER_OWNER="5000")
    settings = Settings(redis_url=valkey.url)
    try:
        with (
            running_worker(env, data_dir, settings),
            running_worker(env, data_dir, settings),
            running_api(env, data_dir) as api,
        ):
            yield Services(valkey, api)
    finally:
        valkey.stop()


@pytest.fixture
async def api(services: Services) -> AsyncIterator[AsyncGraphQL]:
    async with AsyncGraphQL(services.api.base_url) as client:
        yield client


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@pytest.mark.timeout(900)
async def test_jobs_at_a_steady_rate_each_watched_all_end_and_every_watcher_gets_it(
    api: AsyncGraphQL, ledger: Ledger
) -> None:
    count, rate = scale(100, 3000), 50.0
    names = list(TRANSPORTS)
    started = time.monotonic()
    ids: list[str] = []
    latencies: dict[str, list[float]] = {name: [] for name in TRANSPORTS}

    async def job_and_watcher(i: int) -> Stream:
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        submitted = time.monotonic()
        data = await api.data(ENQUEUE, {"i": {"data": i, "delay": 0.02}})
        job_id = data["processData"]["id"]
        ids.append(job_id)
        name = names[i % len(names)]
        stream = await TRANSPORTS[name](api.base_url, WATCH, {"id": job_id}, within=300)
        latencies[name].append(time.monotonic() - submitted)
        return stream

    streams = await asyncio.gather(*(job_and_watcher(i) for i in range(count)))
    elapsed = time.monotonic() - started

    for stream in streams:
        assert not stream.errors, stream.errors
        assert stream.completed and stream.jobs[-1]["state"] == "SUCCESS", stream.jobs[-1:]
    at_once = asyncio.Semaphore(32)

    async def final(job_id: str) -> dict[str, Any]:
        async with at_once:
            return (await api.data(WORKER_OF, {"id": job_id}))["job"]  # type: ignore[no-any-return]

    finals = await asyncio.gather(*(final(job_id) for job_id in ids))
    by_worker = Counter(job["worker"].split("@")[0] for job in finals)
    waits = [_seconds(job["createdAt"], job["startedAt"]) for job in finals]
    runs = [_seconds(job["createdAt"], job["finishedAt"]) for job in finals]
    assert len(by_worker) == 2, f"both workers took jobs: {by_worker}"
    ledger.submitted = count
    ledger.terminal.update(job["state"] for job in finals)
    ledger.subscribers = len(streams)
    ledger.subscribers_ended = sum(s.completed and s.jobs[-1]["done"] for s in streams)
    every = [seconds for each in latencies.values() for seconds in each]
    ledger.notes.append(
        f"{count / elapsed:.0f} jobs/s offered {rate:.0f}/s; enqueue to the watcher's end "
        f"p50 {_percentile(every, 0.5) * 1000:.0f} ms, "
        f"p99 {_percentile(every, 0.99) * 1000:.0f} ms ("
        + ", ".join(f"{k} {_percentile(v, 0.99) * 1000:.0f}" for k, v in latencies.items())
        + "; created to started p50 "
        f"{_percentile(waits, 0.5) * 1000:.0f} ms, to finished p50 "
        f"{_percentile(runs, 0.5) * 1000:.0f} ms); per worker {sorted(by_worker.values())}"
    )
    ledger.settle()


class Left(Exception):
    """The client leaves once it has its first result."""


def _leave(_: dict[str, Any]) -> None:
    raise Left


async def _connect_subscribe_close(i: int, base_url: str, job_id: str) -> None:
    """One cycle over one of the four transports; half the WebSockets vanish without a
    close handshake, as a phone losing its network does."""
    name = list(TRANSPORTS)[i % len(TRANSPORTS)]
    if name in ("graphql-transport-ws", "graphql-ws") and i % 8 >= 4:
        protocol = TRANSPORT_WS if name == "graphql-transport-ws" else LEGACY_WS
        ws = await websocket(base_url, protocol.subprotocol)
        await send(ws, {"type": "connection_init"})
        assert (await asyncio.wait_for(receive(ws), 10))["type"] == "connection_ack"
        payload = {"query": WATCH, "variables": {"id": job_id}}
        await send(ws, {"id": "1", "type": protocol.start, "payload": payload})
        while (await asyncio.wait_for(receive(ws), 10))["type"] != protocol.data:
            pass
        ws.transport.abort()
        return
    with pytest.raises(Left):
        await TRANSPORTS[name](base_url, WATCH, {"id": job_id}, within=10, on_result=_leave)


@pytest.mark.timeout(900)
async def test_connect_subscribe_close_cycles_leave_nothing_behind(
    services: Services, api: AsyncGraphQL, ledger: Ledger
) -> None:
    cycles, concurrency = scale(300, 10_000), 20
    running = await _report(api, steps=10_000, delay=0.05)
    await api.wait(running, lambda job: job["state"] == "PROGRESS")
    url, pid = services.api.base_url, services.api.process.pid  # type: ignore[union-attr]

    async def cycle_from(first: int, step: int, until: int) -> None:
        for i in range(first, until, step):
            await _connect_subscribe_close(i, url, running)

    # The first half brings connection pools to their working size under this very load (on
    # a busy machine a short warm-up left them smaller, and the Redis pool's growth read as
    # leaked descriptors); a leak grows with the cycles, so the second half must add nothing.
    half = cycles // 2
    started = time.monotonic()
    await asyncio.gather(*(cycle_from(i, concurrency, half) for i in range(concurrency)))
    baseline = await back_to(await footprint(url, pid), url, pid, within=2)
    await asyncio.gather(*(cycle_from(half + i, concurrency, cycles) for i in range(concurrency)))
    elapsed = time.monotonic() - started
    after = await back_to(baseline, url, pid)

    assert after.holds_no_more_than(baseline), (baseline, after)
    assert await numsub(services.valkey.url, [running]) == 0
    await api.data(
        "mutation($id: ID!) { cancelJob(id: $id, terminate: true) { id } }", {"id": running}
    )
    ledger.submitted = 1
    ledger.terminal[(await api.wait_done(running))["state"]] += 1
    ledger.subscribers = ledger.subscribers_closed = cycles  # each left by its client
    ledger.notes.append(
        f"{cycles / elapsed:.0f} cycles/s, {concurrency} at once; tasks {baseline.tasks}->"
        f"{after.tasks}, fds {baseline.fds}->{after.fds}, subscribers "
        f"{baseline.subscribers}->{after.subscribers}, RSS {baseline.rss_mb:.0f}->"
        f"{after.rss_mb:.0f} MB, NUMSUB 0 (closed = left by the client)"
    )
    ledger.settle()
