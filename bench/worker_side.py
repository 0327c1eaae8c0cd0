"""P10 and the memory of a record: what running a function as a JobQL job costs the worker.

Each side gets its jobs queued while no worker runs; then one worker (concurrency 2, the
same settings: see ``bench.baselines.plain_worker``) drains them. The rate comes from the
jobs' own finish times (JobQL's ``finished_at``, Celery's ``date_done``), the first tenth
left out (the worker warming up), so neither side's start-up is measured. Progress is
timed inside the task body: ``reports`` calls of ``job.progress`` against as many of stock
``self.update_state``. Memory is Valkey's ``used_memory`` growth per finished job, and
``MEMORY USAGE`` of one job's keys (JobQL's record, and Celery's result entry where one is
written: with ``JOBQL_CELERY_RESULTS=copy`` or ``all``, not with the default ``final``).

    .venv/bin/python -m bench.worker_side --jobs 3000
    .venv/bin/python -m bench.worker_side --jobs 3000 --set JOBQL_CELERY_RESULTS=copy
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench import auth
from bench.stack import Stack, running_stack, start_worker
from devtools.processes import stop_all, worker_command
from tasks.core import records

BATCH = 100
WARM_UP = 0.1  # the share of the first finished jobs left out of the rate
ENQUEUE_MANY = "mutation($items: [EnqueueItem!]!) { enqueueMany(items: $items) { id } }"
META = "celery-task-meta-"


@dataclass(frozen=True)
class Side:
    """One way of running the same work: JobQL jobs, or stock Celery tasks."""

    name: str
    queue_trivial: Callable[[int], Awaitable[list[str]]]
    queue_progress: Callable[[int, int], Awaitable[list[str]]]
    finished_at: Callable[[list[str]], Awaitable[list[float | None]]]
    results: Callable[[list[str]], Awaitable[list[Any]]]
    worker: list[str]
    log: str
    job_keys: Callable[[str], list[str]]


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def jobql_side(stack: Stack, client: aioredis.Redis) -> Side:
    async def enqueue(items: list[dict[str, Any]]) -> list[str]:
        ids: list[str] = []
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=60) as http:
            for first in range(0, len(items), BATCH):
                reply = await http.post(
                    "/graphql",
                    json={
                        "query": ENQUEUE_MANY,
                        "variables": {"items": items[first : first + BATCH]},
                    },
                    headers=auth.headers(),
                )
                body = reply.json()
                assert "errors" not in body, body
                ids += [job["id"] for job in body["data"]["enqueueMany"]]
        return ids

    async def trivial(count: int) -> list[str]:
        return await enqueue([{"task": "bench.trivial", "input": {"n": n}} for n in range(count)])

    async def progress(count: int, reports: int) -> list[str]:
        item = {"task": "bench.progress", "input": {"reports": reports}}
        return await enqueue([item] * count)

    async def finished_at(ids: list[str]) -> list[float | None]:
        async with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(records.job_key(job_id), "finished_at")
            return [_timestamp(text) for text in await pipe.execute()]

    async def results(ids: list[str]) -> list[Any]:
        async with client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(records.job_key(job_id), "result")
            return [json.loads(text) for text in await pipe.execute()]

    return Side(
        "JobQL job",
        trivial,
        progress,
        finished_at,
        results,
        worker_command(("bench",), concurrency=2),
        "jobql",
        lambda job_id: [records.job_key(job_id), META + job_id],
    )


def plain_side(stack: Stack, client: aioredis.Redis) -> Side:
    from bench.baselines import plain_worker

    producer = plain_worker.create_app(stack.valkey.url)

    async def send(name: str, kwargs: Callable[[int], dict[str, Any]], count: int) -> list[str]:
        def loop() -> list[str]:
            return [producer.send_task(name, kwargs=kwargs(n)).id for n in range(count)]

        return await asyncio.to_thread(loop)

    async def metas(ids: list[str]) -> list[dict[str, Any] | None]:
        texts = await client.mget([META + job_id for job_id in ids])
        return [json.loads(text) if text else None for text in texts]

    async def finished_at(ids: list[str]) -> list[float | None]:
        return [
            _timestamp(meta["date_done"]) if meta and meta["status"] == "SUCCESS" else None
            for meta in await metas(ids)
        ]

    async def results(ids: list[str]) -> list[Any]:
        return [meta["result"] if meta else None for meta in await metas(ids)]

    return Side(
        "plain @app.task",
        lambda count: send("plain.trivial", lambda n: {"n": n}, count),
        lambda count, reports: send("plain.progress", lambda _: {"reports": reports}, count),
        finished_at,
        results,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "bench.baselines.plain_worker",
            "worker",
            "-Q",
            "plain",
            "--concurrency",
            "2",
            "--loglevel=INFO",
        ],
        "plain",
        lambda job_id: [META + job_id],
    )


async def _wait(side: Side, ids: list[str], limit: float) -> list[float]:
    """Every job's finish time, once all finished. The last queued is watched first (the
    queue is drained in order), so polling adds next to nothing to the counts measured."""
    deadline = time.monotonic() + limit
    while True:
        if (await side.finished_at(ids[-1:]))[0]:
            times = await side.finished_at(ids)
            if all(times):
                return sorted(t for t in times if t)
        if time.monotonic() > deadline:
            missing = sum(1 for t in await side.finished_at(ids) if not t)
            raise TimeoutError(f"{side.name}: {missing} of {len(ids)} jobs never finished")
        await asyncio.sleep(0.5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its live children (the pool), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def redis_calls(client: aioredis.Redis) -> int:
    """Commands Valkey has run so far (scripts count once, as do their inner calls)."""
    stats = await client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


async def redis_cpu(client: aioredis.Redis) -> float:
    """Valkey's own CPU seconds so far (user + system): on a shared machine it competes
    with the worker, so what a job costs Valkey slows the worker too."""
    stats = await client.info("cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


async def run_side(
    stack: Stack, client: aioredis.Redis, side: Side, jobs: int, reports: int
) -> dict[str, float]:
    """Queue, start a worker, drain; then the progress jobs on the same worker."""
    used_before = (await client.info("memory"))["used_memory"]
    ids = await side.queue_trivial(jobs)
    worker = start_worker(stack, side.worker, log_name=f"{side.log}-worker.log")
    try:
        # Idle CPU and calls first (start-up, heartbeats) so the drain's own can be told.
        await asyncio.sleep(0)
        cpu_before, calls_before = cpu_seconds(worker.pid), await redis_calls(client)
        redis_before = await redis_cpu(client)
        times = await _wait(side, ids, limit=jobs / 20 + 120)
        cpu = cpu_seconds(worker.pid) - cpu_before
        calls = await redis_calls(client) - calls_before
        redis_seconds = await redis_cpu(client) - redis_before
        used = (await client.info("memory"))["used_memory"] - used_before
        skip = int(len(times) * WARM_UP)
        rate = (len(times) - 1 - skip) / (times[-1] - times[skip])
        progress_ids = await side.queue_progress(10, reports)
        await _wait(side, progress_ids, limit=120)
        per_report = statistics.median(
            result["seconds"] / reports for result in await side.results(progress_ids)
        )
        key_bytes = 0
        for key in side.job_keys(ids[len(ids) // 2]):
            key_bytes += await client.memory_usage(key) or 0
    finally:
        stop_all([worker])
    return {
        "jobs_per_second": rate,
        "cpu_ms_per_job": cpu * 1000 / jobs,
        "redis_calls_per_job": calls / jobs,
        "redis_cpu_ms_per_job": redis_seconds * 1000 / jobs,
        "progress_us": per_report * 1e6,
        "used_memory_per_job": used / jobs,
        "key_bytes": key_bytes,
    }


async def measure(
    stack: Stack, jobs: int, reports: int, repetitions: int
) -> list[dict[str, float]]:
    """Per repetition, the baseline then JobQL: P10 (jobs/s), P10b (µs per progress
    report), and each side's memory per job (P16)."""
    # The baseline's worker reads its Redis from the environment.
    stack.env["BENCH_REDIS_URL"] = stack.valkey.url
    client = aioredis.Redis.from_url(stack.valkey.url, decode_responses=True)
    runs: list[dict[str, float]] = []
    try:
        plain, ours = plain_side(stack, client), jobql_side(stack, client)
        for _ in range(repetitions):
            base = await run_side(stack, client, plain, jobs, reports)
            jobql = await run_side(stack, client, ours, jobs, reports)
            runs.append({
                "P10.baseline": base["jobs_per_second"],
                "P10.jobql": jobql["jobs_per_second"],
                "P10b.baseline": base["progress_us"],
                "P10b.jobql": jobql["progress_us"],
                "cpu.baseline": base["cpu_ms_per_job"],
                "cpu.jobql": jobql["cpu_ms_per_job"],
                "calls.baseline": base["redis_calls_per_job"],
                "calls.jobql": jobql["redis_calls_per_job"],
                "redis_cpu.baseline": base["redis_cpu_ms_per_job"],
                "redis_cpu.jobql": jobql["redis_cpu_ms_per_job"],
                "memory.baseline.used": base["used_memory_per_job"],
                "memory.jobql.used": jobql["used_memory_per_job"],
                "memory.baseline.keys": base["key_bytes"],
                "memory.jobql.keys": jobql["key_bytes"],
                # P16: Valkey's used_memory growth per finished job, each side.
                "P16.baseline": base["used_memory_per_job"],
                "P16.jobql": jobql["used_memory_per_job"],
            })  # fmt: skip
    finally:
        await client.aclose()
    return runs


def running(settings: dict[str, str]) -> Any:
    """A stack with the bench tasks and no worker: each side starts its own."""
    return running_stack(
        worker=False,
        task_modules='["tasks.examples", "bench.tasks"]',
        queues=("bench",),
        settings=settings,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="JOBQL_NAME=value for JobQL")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    with running(settings=settings) as stack:
        runs = asyncio.run(measure(stack, args.jobs, args.reports, args.repetitions))
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
