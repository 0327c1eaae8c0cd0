"""``make bench``: JobQL's figures next to their baselines, measured in one run.

Each repetition measures the baseline and JobQL back to back, so the drift of this shared
machine hits both alike; the table shows median, min and max over the repetitions and the
ratio of the medians. Results go to ``bench/results/latest.json`` and ``latest.md``.

    .venv/bin/python -m bench.run            # full: 3 repetitions
    .venv/bin/python -m bench.run --tiny     # seconds: proves the harness works (make test)
    .venv/bin/python -m bench.run --only P1,P5,P3 --set JOBQL_MAX_CONCURRENT_OPERATIONS=8
                                             # some figures, with a setting changed
    .venv/bin/python -m bench.run --only P1,P3,P6 --auth jwt
                                             # with bearer JWTs checked on every request
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import uvloop

from bench import auth, httpload, worker_side
from bench.filtered_page import filtered_page
from bench.stack import ROOT, Stack, cpu_seconds, running_stack
from bench.subscriptions import (
    RelayProcess,
    capacity,
    fanout_latency,
    raw_fanout_latency,
    relay_fanout,
)
from devtools.processes import free_port, stop_all, wait_for_port
from tasks.core import records

RESULTS = ROOT / "bench" / "results"
MUTATION = "mutation($i: GenerateReportInput!) { generateReport(input: $i) { id state } }"
JOB = "query($id: ID!) { job(id: $id) { id state progress { percent } result } }"
PAGE = "{ jobs(first: 50) { edges { node { id state progress { percent } result } } } }"


@dataclass(frozen=True)
class Size:
    repetitions: int
    requests: int
    concurrency: int
    page_samples: int
    events: int
    subscriptions: int
    rate: float = 500.0
    seconds: float = 6.0
    starts: int = 30
    p6_subscriptions: int = 1000
    p7_subscriptions: int = 5000
    fanout_seconds: float = 10.0
    batches: int = 100  # P11: enqueueMany requests of BATCH jobs each
    worker_jobs: int = 3000  # P10: jobs each side's worker drains
    progress_reports: int = 200  # P10b: progress reports per job
    p12_sizes: tuple[int, int] = (1_000, 1_000_000)  # P12: stored jobs, baseline then figure
    # Wait for the worker to run every job a figure created before the next one (see
    # worker_idle); the harness test skips it, it measures nothing.
    idle_worker: bool = True


FULL = Size(repetitions=3, requests=4000, concurrency=32, page_samples=200, events=300,
            subscriptions=20_000, p7_subscriptions=10_000)  # fmt: skip
TINY = Size(repetitions=1, requests=100, concurrency=4, page_samples=5, events=20,
            subscriptions=50, rate=50.0, seconds=1.0, starts=3, p6_subscriptions=10,
            p7_subscriptions=20, fanout_seconds=2.0, batches=3, worker_jobs=60,
            progress_reports=10, p12_sizes=(200, 2_000), idle_worker=False)  # fmt: skip
BATCH = 100
# The interpreter the Docker image ships and the recorded runs use: its results are
# `latest.*`; a run on another (`make bench PYTHON=... VENV=...`) writes `latest-py3.X.*`.
RECORDED_PYTHON = (3, 11)
PROFILES = {
    # As a deployment runs: bearer JWTs on every request, JSON logs, production checks on.
    "production": {"JOBQL_ENV": "production", "JOBQL_LOG_FORMAT": "json"},
    "development": {},
}


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _ok_graphql(status: int, body: bytes) -> bool:
    return status == 200 and b'"errors"' not in body


async def closed_loop(
    port: int, request: Callable[[int], bytes], size: Size, ok: Any = None
) -> httpload.LoadResult:
    return await httpload.run(
        "127.0.0.1",
        port,
        request,
        total=size.requests,
        concurrency=size.concurrency,
        **({"ok": ok} if ok else {}),
    )


def graphql_request(port: int, query: str, variables: Callable[[int], dict[str, Any]]) -> Any:
    return lambda n: httpload.post_request(
        "127.0.0.1", port, "/graphql", {"query": query, "variables": variables(n)}
    )


def rest_post(port: int, path: str) -> Any:
    return lambda n: httpload.post_request("127.0.0.1", port, path, {"data": {"n": n}})


def get_request(port: int, path: Callable[[int], str]) -> Any:
    return lambda n: f"GET {path(n)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


class Probe:
    """``/health/live`` timed from a process of its own (see ``bench.probe``), from
    ``start()`` until ``stop()``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.probe", str(self.port), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert (await self.process.stdout.readline()).strip() == b"ready"

    async def stop(self) -> list[float]:
        assert self.process is not None
        output, _ = await self.process.communicate(b"stop\n")
        samples: list[float] = json.loads(output)
        return samples


async def probe_latency(port: int, seconds: float) -> list[float]:
    probe = Probe(port)
    await probe.start()
    await asyncio.sleep(seconds)
    return await probe.stop()


async def _ids(port: int, count: int) -> list[str]:
    """Jobs to read: created through the typed mutation, kept from the load's responses."""
    ids: list[str] = []

    def keep(status: int, body: bytes) -> bool:
        ids.append(json.loads(body)["data"]["generateReport"]["id"])
        return status == 200

    await httpload.run(
        "127.0.0.1",
        port,
        graphql_request(port, MUTATION, lambda n: {"i": {"userId": n, "stepDelay": 0}}),
        total=count,
        concurrency=8,
        ok=keep,
    )
    return ids


async def one_repetition(
    jobql: Stack, rest_port: int, size: Size, only: frozenset[str]
) -> dict[str, float]:
    port = jobql.port
    out: dict[str, float] = {}
    mutation = graphql_request(port, MUTATION, lambda n: {"i": {"userId": n, "stepDelay": 0}})
    query = graphql_request(port, JOB, lambda n: {"id": ids[n % len(ids)]})
    ids: list[str] = []
    if only & {"P1", "P5", "P14"}:
        await p1_p5(jobql, rest_port, mutation, size, out)
        if size.idle_worker:
            await worker_idle(jobql)
    if only & {"P1B", "P11", "P14"}:
        raw_loop = await raw_enqueue_loop(jobql, size.requests)
        out["P1b.baseline"] = out["P11.baseline"] = raw_loop.per_second
        if "P1.jobql" in out:
            out["P1b.jobql"] = out["P1.jobql"]
            # P14: the API's CPU per typed mutation under P1 against the raw loop's per job.
            out["P14.jobql"] = out["P1.cpu_us"]
            out["P14.baseline"] = raw_loop.cpu_us_per_job
        if "P11" in only:
            out["P11.jobql"] = await enqueue_many_rate(port, size)
        if size.idle_worker:
            await worker_idle(jobql)
    if only & {"P3", "P4"}:
        ids += await _ids(port, 200)
        if size.idle_worker:
            await worker_idle(jobql)
    if "P3" in only:
        rest_read = await closed_loop(
            rest_port, get_request(rest_port, lambda n: f"/api/task/{ids[n % len(ids)]}"), size
        )
        out["P3.baseline"] = rest_read.per_second
        used = cpu_seconds(jobql.api.pid)
        out["P3.jobql"] = (await closed_loop(port, query, size, ok=_ok_graphql)).per_second
        out["P3.cpu_us"] = (cpu_seconds(jobql.api.pid) - used) / size.requests * 1e6
    if "P4" in only:
        await p4(port, query, size, out)
    if "P2" in only:
        await p2(port, rest_port, mutation, size, out)
    if "P9" in only:
        # P9: enqueue -> a worker starts it, idle system, against raw apply_async -> start.
        out["P9.baseline"], out["P9.jobql"] = await start_latencies(jobql, size.starts)
    # P6, P7: N subscriptions x 1 progress report a second from workers, against raw Redis
    # pub/sub carrying the same N channels x 1 message a second to one subscriber.
    if only & {"P6", "P13", "P15"}:
        await p6_p13_p15(jobql, mutation, size, only, out)
    if "P7" in only:
        count = size.p7_subscriptions
        raw = await raw_fanout_latency(jobql.valkey.url, count, size.fanout_seconds)
        e2e = await fanout_latency(jobql.base_url, count, size.fanout_seconds)
        out["P7.baseline"] = _p(raw, 0.99) * 1000
        out["P7.jobql"] = _p(e2e.latencies, 0.99) * 1000
        out["P7.received"] = len(e2e.latencies) / (count * int(size.fanout_seconds))
        await settle(jobql)
    return out


async def p6_p13_p15(
    jobql: Stack, mutation: Any, size: Size, only: frozenset[str], out: dict[str, float]
) -> None:
    """P6: progress to client p99 with 1,000 subscriptions, against raw pub/sub. P13: the
    API's CPU per event it delivered meanwhile, against a minimal relay's per message for
    the same delivery (its own process, its own CPU). P15: P6 again while P1's closed-loop
    flood of typed mutations runs against the same API process, against P6's quiet p99."""
    count, seconds = size.p6_subscriptions, size.fanout_seconds
    expected = count * int(seconds)
    raw = await raw_fanout_latency(jobql.valkey.url, count, seconds)
    quiet = await fanout_latency(jobql.base_url, count, seconds, api_pid=jobql.api.pid)
    out["P6.baseline"] = _p(raw, 0.99) * 1000
    out["P6.jobql"] = _p(quiet.latencies, 0.99) * 1000
    out["P6.received"] = len(quiet.latencies) / expected
    await settle(jobql)
    if "P13" in only:
        relay = RelayProcess(jobql.valkey.url)
        try:
            relayed = await relay_fanout(jobql.base_url, relay, count, seconds)
        finally:
            relay.stop()
        out["P13.jobql"] = quiet.cpu_us_per_message
        out["P13.baseline"] = relayed.cpu_us_per_message
        out["P13.received"] = quiet.delivered / expected
        out["P13.baseline_received"] = relayed.delivered / expected
    if "P15" in only:
        flooded: list[httpload.LoadResult] = []

        async def flood(reporting_seconds: float) -> None:
            # P1's load for as long as the reports go out (and a second more).
            flooded.append(
                await httpload.run(
                    "127.0.0.1",
                    jobql.port,
                    mutation,
                    total=10**9,
                    concurrency=size.concurrency,
                    ok=_ok_graphql,
                    deadline=time.monotonic() + reporting_seconds + 1,
                )
            )

        busy = await fanout_latency(jobql.base_url, count, seconds, alongside=flood)
        assert flooded[0].completed, flooded[0].first_failure
        out["P15.load_per_second"] = flooded[0].per_second
        out["P15.baseline"] = out["P6.jobql"]
        out["P15.jobql"] = _p(busy.latencies, 0.99) * 1000
        out["P15.received"] = len(busy.latencies) / expected
        await settle(jobql)
        if size.idle_worker:  # as after P1: its jobs must not weigh on the next figure
            await worker_idle(jobql)


async def p1_p5(
    jobql: Stack, rest_port: int, mutation: Any, size: Size, out: dict[str, float]
) -> None:
    """P1: closed-loop enqueue throughput, the guide's endpoint against the typed mutation,
    and the API process's CPU per mutation (steadier than throughput on a shared machine);
    P5: meanwhile, the loop keeps answering a health probe."""
    port = jobql.port
    rest = await closed_loop(rest_port, rest_post(rest_port, "/api/process"), size)
    out["P1.baseline"] = rest.per_second
    probe = Probe(port)
    await probe.start()
    used = cpu_seconds(jobql.api.pid)
    ours = await closed_loop(port, mutation, size, ok=_ok_graphql)
    out["P1.cpu_us"] = (cpu_seconds(jobql.api.pid) - used) / size.requests * 1e6
    busy = await probe.stop()
    out["P1.jobql"] = ours.per_second
    out["P5.stall"] = await longest_stall(port, math.ceil(size.requests / ours.per_second))
    idle = await probe_latency(port, 3.0)
    out["P5.baseline"] = _p(idle, 0.99) * 1000
    out["P5.jobql"] = _p(busy, 0.99) * 1000


async def longest_stall(port: int, seconds: int) -> float:
    """The API's own account of its event loop's longest stall (ms) in the last ``seconds``,
    as ``gql.ops.loop_lag`` measured it: the figure (P1) that lasted that long has just ended."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        stats = await client.get("/health/stats", params={"loop_lag_seconds": seconds})
    return float(stats.json()["loop_lag_ms"][f"longest_last_{seconds}s"])


@dataclass(frozen=True)
class EnqueueLoop:
    per_second: float  # P1b and P11's baseline
    cpu_us_per_job: float  # P14's: the loop's own CPU (its thread's), setup excluded


async def raw_enqueue_loop(stack: Stack, count: int) -> EnqueueLoop:
    """P1b, P11 and P14's baseline: ``send_task`` in a loop in one Python process, no HTTP at
    all, the same producer settings as the API's (no result backend, JSON): jobs per second,
    and the CPU per job of the thread running the loop (nothing else runs in it)."""
    from tasks.core.app import create_celery_app
    from tasks.core.settings import Settings

    producer = create_celery_app(Settings(redis_url=stack.valkey.url), producer=True)

    def send(n: int) -> None:
        producer.send_task(
            "generate_report", kwargs={"input": {"userId": n, "stepDelay": 0}}, queue="jobql"
        )

    def loop() -> EnqueueLoop:
        send(0)  # connected and warm before the clocks start
        began, cpu_began = time.perf_counter(), time.thread_time()
        for n in range(count):
            send(n)
        cpu = time.thread_time() - cpu_began
        return EnqueueLoop(count / (time.perf_counter() - began), cpu / count * 1e6)

    try:
        return await asyncio.to_thread(loop)
    finally:
        producer.close()


ENQUEUE_MANY = "mutation($items: [EnqueueItem!]!) { enqueueMany(items: $items) { id } }"


async def enqueue_many_rate(port: int, size: Size) -> float:
    """P11: jobs per second through ``enqueueMany``, BATCH jobs a request, closed loop."""

    def items(n: int) -> dict[str, Any]:
        return {
            "items": [
                {"task": "generate_report", "input": {"userId": n * BATCH + i, "stepDelay": 0}}
                for i in range(BATCH)
            ]
        }

    result = await httpload.run(
        "127.0.0.1",
        port,
        graphql_request(port, ENQUEUE_MANY, items),
        total=size.batches,
        concurrency=4,
        ok=_ok_graphql,
    )
    return result.per_second * BATCH


async def p4(port: int, query: Any, size: Size, out: dict[str, float]) -> None:
    """A page of 50 in one query against 50 job(id) queries, p99 of each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    pages, fifties = [], []
    page_request = graphql_request(port, PAGE, lambda _: {})(0)
    for sample in range(size.page_samples):
        started = time.perf_counter()
        writer.write(page_request)
        await httpload._read_response(reader)
        pages.append(time.perf_counter() - started)
        started = time.perf_counter()
        for n in range(50):
            writer.write(query(sample * 50 + n))
            await httpload._read_response(reader)
        fifties.append(time.perf_counter() - started)
    writer.close()
    out["P4.baseline"] = _p(fifties, 0.99) * 1000
    out["P4.jobql"] = _p(pages, 0.99) * 1000


async def p2(port: int, rest_port: int, mutation: Any, size: Size, out: dict[str, float]) -> None:
    """The same fixed rate into both, open loop; the baseline moves .delay() to a thread."""
    rest_fixed = await httpload.open_loop(
        "127.0.0.1",
        rest_port,
        rest_post(rest_port, "/api/process-threadpool"),
        rate=size.rate,
        seconds=size.seconds,
    )
    ours_fixed = await httpload.open_loop(
        "127.0.0.1", port, mutation, rate=size.rate, seconds=size.seconds
    )
    out["P2.baseline"] = _p(rest_fixed.latencies, 0.99) * 1000
    out["P2.jobql"] = _p(ours_fixed.latencies, 0.99) * 1000


async def settle(stack: Stack, limit: float = 120.0) -> None:
    """Wait until the API has let go of every subscription: a saturated fan-out leaves a
    backlog that would otherwise be measured as the next figure's latency."""
    import httpx

    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
        while time.monotonic() < deadline:
            stats = (await http.get("/health/stats")).json()
            if stats["channels"] == 0 and stats["pending_events"] == 0:
                break
            await asyncio.sleep(0.2)
    await asyncio.sleep(1)


IDLE = "{ queues { pending consumers } workers { active reserved } }"


async def worker_idle(stack: Stack, limit: float = 300.0) -> None:
    """Wait until the worker has run every job sent so far.

    The jobs a figure creates (P1's flood, P3's 200 reads) would otherwise still be running
    during the next figure, which would then measure the worker's work too (the worker,
    Valkey and the API share two cores). ``queues`` is cached 3 s and heartbeats come every
    2 s, so idle is believed after two quiet answers 3.5 s apart.
    """
    import httpx

    deadline = time.monotonic() + limit
    quiet = 0
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=10) as http:
        while quiet < 2 and time.monotonic() < deadline:
            reply = await http.post("/graphql", json={"query": IDLE}, headers=auth.headers())
            data = reply.json()["data"]
            # A queue nobody consumes (the REST baseline's) only grows: not the worker's work.
            waiting = (q["pending"] for q in data["queues"] if q["consumers"])
            busy = any(waiting) or any(w["active"] or w["reserved"] for w in data["workers"])
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.5 if busy else 3.5)


async def _started_at(client: Any, job_id: str) -> float:
    """The worker's start time of a job, from its record (set in JobTask.before_start)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        started = await client.hget(records.job_key(job_id), "started_at")
        if started:
            return datetime.fromisoformat(started).timestamp()
        await asyncio.sleep(0.002)
    raise TimeoutError(f"job {job_id} never started")


async def start_latencies(stack: Stack, samples: int) -> tuple[float, float]:
    """p50 seconds from enqueue to start: raw ``send_task`` and JobQL's ``enqueue``."""
    import redis.asyncio as aioredis

    from tasks.core.app import create_celery_app
    from tasks.core.settings import Settings

    client = aioredis.Redis.from_url(stack.valkey.url, decode_responses=True)
    producer = create_celery_app(Settings(redis_url=stack.valkey.url), producer=True)
    raw, ours = [], []
    query = (
        'mutation($i: JSON!) { enqueue(task: "bench.stamp", input: $i,'
        ' options: {queue: "bench"}) { id createdAt } }'
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    for _ in range(samples):
        sent = time.time()
        result = await asyncio.to_thread(
            producer.send_task, "bench.stamp", kwargs={"sent_at": sent}, queue="bench"
        )
        raw.append(await _started_at(client, result.id) - sent)
        sent = time.time()
        writer.write(
            httpload.post_request(
                "127.0.0.1",
                stack.port,
                "/graphql",
                {"query": query, "variables": {"i": {"sentAt": sent}}},
            )
        )
        _, body = await httpload._read_response(reader)
        job_id = json.loads(body)["data"]["enqueue"]["id"]
        ours.append(await _started_at(client, job_id) - sent)
    writer.close()
    producer.close()
    await client.aclose()
    return statistics.median(raw) * 1000, statistics.median(ours) * 1000


FIGURES = {
    "P1": ("typed mutation throughput (req/s)", "REST .delay() endpoint", ">= 1.5x", "higher"),
    "P1b": (
        "typed mutation throughput over HTTP (req/s)",
        "raw apply_async loop, one process, no HTTP",
        ">= 1.0x",
        "higher",
    ),
    "P2": (
        "typed mutation p99 at 500 req/s (ms)",
        "REST, producer in a thread",
        "<= 0.8x",
        "lower",
    ),
    "P3": ("job(id) query throughput (req/s)", "REST AsyncResult endpoint", ">= 2.0x", "higher"),
    "P4": ("jobs(first: 50) latency p99 (ms)", "50 x job(id) reads", "<= 0.1x", "lower"),
    "P5": (
        "/health/live p99 during P1 (ms)",
        "same endpoint idle",
        "<= 3x, longest loop stall <= 20 ms",
        "lower",
    ),
    "P6": ("progress to client p99 (ms), 1,000 subs x 1/s", "raw Redis pub/sub", "<= 2x", "lower"),
    "P7": (
        "progress to client p99 (ms), 10,000 subs x 1/s",
        "raw Redis pub/sub",
        "100% of reports received, p99 <= 50 ms",
        "lower",
    ),
    "P9": ("enqueue to worker start p50 (ms)", "raw apply_async", "<= 1.2x", "lower"),
    "P10": (
        "worker throughput, trivial task as a JobQL job (jobs/s)",
        "plain @app.task, Celery's Redis result backend",
        ">= 0.95x",
        "higher",
    ),
    "P10b": (
        "one progress report in the worker (µs)",
        "stock self.update_state",
        "<= 1.0x",
        "lower",
    ),
    "P11": (
        "jobs enqueued per second, enqueueMany x 100",
        "raw apply_async loop, one process",
        ">= 8x",
        "higher",
    ),
    "P12": (
        "jobs(first: 50, filter: FAILURE) p99 (ms), 1,000,000 stored, exact",
        "same page, 1,000 stored",
        "<= 2x",
        "lower",
    ),
    "P13": (
        "API CPU per delivered progress event (µs), P6's load",
        "minimal relay: redis-py pub/sub reader + websockets sender, own process",
        "<= 50 µs and <= 3x",
        "lower",
    ),
    "P14": (
        "API CPU per typed mutation (µs), P1's load",
        "raw apply_async loop's CPU per job, one process, no HTTP",
        "<= 1.0x",
        "lower",
    ),
    "P15": (
        "progress to client p99 (ms), P6's load while P1 floods the same API",
        "P6's quiet p99, same run",
        "<= 3x",
        "lower",
    ),
    "P16": (
        "Redis memory per finished job (B)",
        "plain Celery, its Redis result backend",
        "<= 1.2x",
        "lower",
    ),
}


def summarise(runs: list[dict[str, float]], extra: dict[str, Any], size: Size) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key, (what, baseline, target, better) in FIGURES.items():
        if f"{key}.jobql" not in runs[0]:
            continue
        ours = [run[f"{key}.jobql"] for run in runs]
        base = [run[f"{key}.baseline"] for run in runs]
        figures[key] = {
            "figure": what,
            "baseline": baseline,
            "target": target,
            "better": better,
            "jobql": {"median": statistics.median(ours), "min": min(ours), "max": max(ours)},
            "baseline_value": {
                "median": statistics.median(base),
                "min": min(base),
                "max": max(base),
            },
            "ratio": statistics.median(ours) / statistics.median(base),
        }
        stalls = [run[f"{key}.stall"] for run in runs if f"{key}.stall" in run]
        if stalls:
            # The event loop's longest stall while P1 ran (P5's second target: <= 20 ms).
            figures[key]["stall"] = max(stalls)
            figures[key]["stalls"] = stalls
        cpu = [run[f"{key}.cpu_us"] for run in runs if f"{key}.cpu_us" in run]
        if cpu:
            figures[key]["cpu_us"] = statistics.median(cpu)
        received = [run[f"{key}.received"] for run in runs if f"{key}.received" in run]
        if received:
            # Share of the reports the subscribers actually got (coalescing drops progress).
            figures[key]["received"] = statistics.median(received)
        relayed = [
            run[f"{key}.baseline_received"] for run in runs if f"{key}.baseline_received" in run
        ]
        if relayed:
            figures[key]["baseline_received"] = statistics.median(relayed)
        load = [run[f"{key}.load_per_second"] for run in runs if f"{key}.load_per_second" in run]
        if load:  # the flood P15 measures under, to show it ran
            figures[key]["load_per_second"] = statistics.median(load)
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "python": platform.python_version(),
        "size": size.__dict__,
        "figures": figures,
        **extra,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Measured {result['when']} on {result['machine']}, {result.get('profile', '')}"
        f" profile (auth: {result.get('auth', 'none')}); "
        f"{result['size']['repetitions']} repetition(s), median (min-max).",
        "",
        "| # | figure | JobQL | baseline | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for key, fig in result["figures"].items():
        ours, base = fig["jobql"], fig["baseline_value"]
        spread = f"{ours['median']:.1f} ({ours['min']:.1f}-{ours['max']:.1f})"
        base_spread = f"{base['median']:.1f} ({base['min']:.1f}-{base['max']:.1f})"
        if "cpu_us" in fig:
            spread += f", API CPU {fig['cpu_us']:.0f} µs per request"
        if "received" in fig:
            spread += f", {fig['received']:.0%} of reports received"
        if "load_per_second" in fig:
            spread += f", under {fig['load_per_second']:.0f} mutations/s"
        if "stall" in fig:
            spread += f"; longest loop stall {fig['stall']:.1f} ms"
        if "baseline_received" in fig:
            base_spread += f", {fig['baseline_received']:.0%} of messages received"
        lines.append(
            f"| {key} | {fig['figure']} | {spread} | {fig['baseline']}: {base_spread}"
            f" | {fig['ratio']:.2f}x | {fig['target']} |"
        )
    cap = result.get("P8")
    if cap:
        lines.append(
            f"| P8 | concurrent job(id) subscriptions, one API process | {cap['subscriptions']}"
            f" held, {cap['rss_kib_per_subscription']:.1f} KiB RSS each | — | — |"
            " >= 20,000, <= 16 KiB each |"
        )
    memory = result.get("memory")
    if memory:
        lines += [
            "",
            f"Redis memory per finished job: JobQL {memory['memory.jobql.used']:,.0f} B"
            f" (its keys, the record and any Celery result entry:"
            f" {memory['memory.jobql.keys']:,.0f} B"
            " by MEMORY USAGE), plain Celery"
            f" {memory['memory.baseline.used']:,.0f} B (its result entry:"
            f" {memory['memory.baseline.keys']:,.0f} B).",
        ]
    return "\n".join(lines) + "\n"


def start_rest(stack: Stack) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "BENCH_REDIS_URL": stack.valkey.url, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.baselines.rest:app", "--port", str(port),
         "--no-access-log", "--log-level", "warning"],
        env=env, cwd=ROOT,
    )  # fmt: skip
    wait_for_port(port, 30, process)
    return process, port


async def warm_up(stack: Stack, rest_port: int) -> None:
    """Both servers answer a few hundred requests first: caches and code paths warm."""
    warm = Size(1, 300, 8, 1, 1, 1)
    await closed_loop(rest_port, rest_post(rest_port, "/api/process"), warm)
    mutation = graphql_request(stack.port, MUTATION, lambda n: {"i": {"userId": n, "stepDelay": 0}})
    await closed_loop(stack.port, mutation, warm, ok=_ok_graphql)


async def measure(
    stack: Stack, rest_port: int, size: Size, only: frozenset[str]
) -> tuple[list[dict[str, float]], dict[str, Any]]:
    extra: dict[str, Any] = {}
    if "P8" in only:
        # First, on a fresh process: later figures leave memory that RSS never gives back.
        extra["P8"] = await capacity(stack.base_url, stack.api.pid, size.subscriptions)
    await warm_up(stack, rest_port)
    runs = [await one_repetition(stack, rest_port, size, only) for _ in range(size.repetitions)]
    return runs, extra


async def measure_p12(stack: Stack, size: Size) -> list[dict[str, float]]:
    """P12 on a stack of its own: a million records would weigh on every other figure."""
    owner = "bench" if auth.AUTHORIZATION else "anonymous"
    small, large = size.p12_sizes
    series = await filtered_page(stack, size.p12_sizes, size.page_samples, size.repetitions, owner)
    return [
        {"P12.baseline": _p(base, 0.99) * 1000, "P12.jobql": _p(ours, 0.99) * 1000}
        for base, ours in zip(series[small], series[large], strict=True)
    ]


def memory_line(runs: list[dict[str, float]]) -> dict[str, float]:
    """Redis memory per stored job, medians over the P10 repetitions."""
    keys = (
        "memory.jobql.used",
        "memory.jobql.keys",
        "memory.baseline.used",
        "memory.baseline.keys",
    )
    return {key: statistics.median(run[key] for run in runs) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="a few seconds, to test the harness")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", default=",".join([*FIGURES, "P8"]), help="e.g. P1,P5")
    parser.add_argument("--repetitions", type=int, help="instead of the size's own")
    parser.add_argument("--set", action="append", default=[], help="JOBQL_NAME=value for JobQL")
    parser.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="production",
        help="production: JWT on every request, JSON logs, production checks (the default)",
    )
    parser.add_argument("--auth", choices=["none", "jwt"], help="see bench.auth")
    args = parser.parse_args()
    size = TINY if args.tiny else FULL
    if args.repetitions:
        size = replace(size, repetitions=args.repetitions)
    only = frozenset(args.only.upper().split(","))
    settings = {**PROFILES[args.profile], **dict(item.split("=", 1) for item in args.set)}
    auth_mode = args.auth or ("jwt" if args.profile == "production" else "none")
    if auth_mode == "jwt":
        settings = {**auth.jwt_on(), **settings}

    modules = '["tasks.examples", "bench.tasks"]'
    runs: list[dict[str, float]] = [{} for _ in range(size.repetitions)]
    extra: dict[str, Any] = {}
    if only - {"P10", "P10B", "P12", "P16"}:
        # The REST baseline reads jobs JobQL's worker ran with stock Celery's backend, which
        # finds an outcome stored once (in the record) nowhere and answers PENDING, cheaply
        # and wrongly: its jobs keep Celery's own entry (P16 is measured apart, as deployed).
        main = {"JOBQL_CELERY_RESULTS": "copy", **settings}
        with running_stack(
            worker=True, task_modules=modules, queues=("bench",), settings=main
        ) as stack:
            rest, rest_port = start_rest(stack)
            try:
                time.sleep(3)  # let the worker come up
                main_runs, extra = uvloop.run(measure(stack, rest_port, size, only))
            finally:
                stop_all([rest])
        for run, more in zip(runs, main_runs, strict=True):
            run.update(more)
    if only & {"P10", "P10B", "P16"}:
        with worker_side.running(settings) as stack:
            side_runs = uvloop.run(
                worker_side.measure(
                    stack, size.worker_jobs, size.progress_reports, size.repetitions
                )
            )
        for run, more in zip(runs, side_runs, strict=True):
            run.update(more)
        extra["memory"] = memory_line(side_runs)
    if "P12" in only:
        with running_stack(worker=False, task_modules=modules, settings=settings) as stack:
            p12_runs = uvloop.run(measure_p12(stack, size))
        for run, more in zip(runs, p12_runs, strict=True):
            run.update(more)
    result = summarise(runs, extra, size)
    # The secret is made for this run alone; the record says only that it was on.
    result["settings"] = {k: v for k, v in settings.items() if k != "JOBQL_JWT_SECRET"}
    result["profile"] = args.profile
    result["auth"] = auth_mode
    args.out.mkdir(parents=True, exist_ok=True)
    name = "latest" if args.profile == "production" else f"latest-{args.profile}"
    if sys.version_info[:2] != RECORDED_PYTHON:  # another interpreter's run keeps its own file
        name += f"-py{sys.version_info.major}.{sys.version_info.minor}"
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    (args.out / f"{name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
