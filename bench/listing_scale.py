"""Filtered `jobs` pages as records pile up: 1,000, 100,000 and 1,000,000 stored jobs.

    .venv/bin/python -m bench.listing_scale            # about 3 minutes on 2 cores
    .venv/bin/python -m bench.listing_scale --sizes 1000,100000

Starts its own Valkey (snapshots off) and writes the records straight through the record
scripts (create, then one update to their final state), pipelined; no worker runs. Most
jobs succeed; one in 10,000 fails, one of the first jobs written among them, so a FAILURE filter
must find matches behind every newer job. Each figure is the time of one page
(``first: 20``, i.e. 21 read to know ``hasNextPage``) through the API's own store call,
one round trip, first page and a page from a cursor in the middle; memory is Valkey's
``used_memory`` growth divided by the jobs written.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

from devtools.valkey import EmbeddedValkey
from gql.services.store import JobStore, connect
from tasks.core import records, scripts
from tasks.core.records import JobState
from tasks.core.scripts import PageQuery
from tasks.core.settings import Settings

TASKS = ("process_data", "generate_report", "send_email", "resize_image", "sync_account")
SPAN = timedelta(days=6)  # creation times spread over the retention window
TTL = 7 * 24 * 3600
BATCH = 2000
SAMPLES = 200


def _state(n: int) -> JobState:
    if n == 2 or n % 10_000 == 5_002:  # all of them send_email jobs
        return JobState.FAILURE
    if n % 50 == 1:
        return JobState.PENDING
    if n % 50 == 2:
        return JobState.STARTED
    return JobState.SUCCESS


async def fill(
    store: JobStore,
    start: int,
    stop: int,
    origin: datetime,
    step: timedelta,
    *,
    owner: str = "anonymous",
    state_of: Callable[[int], JobState] = _state,
) -> list[str]:
    """Jobs ``start..stop``, oldest first, ``step`` apart from ``origin`` on; returns the
    ids of those that failed, oldest first."""
    failed: list[str] = []
    for first in range(start, stop, BATCH):
        async with store.client.pipeline(transaction=False) as pipe:
            for n in range(first, min(stop, first + BATCH)):
                fields = records.new_record(
                    job_id=str(uuid.uuid4()),
                    task=TASKS[n % len(TASKS)],
                    owner=owner,
                    queue="jobql",
                    input_json={"n": n},
                    created_at=origin + step * n,
                )
                create = scripts.create_call(fields, ttl=TTL)
                await store._create(keys=create.keys, args=create.args, client=pipe)
                state = state_of(n)
                if state is JobState.FAILURE:
                    failed.append(fields["id"])
                if state is not JobState.PENDING:
                    update = scripts.update_call(
                        fields["id"], state, owner=owner, task=fields["task"], ttl=TTL
                    )
                    await store._update(keys=update.keys, args=update.args, client=pipe)
            await pipe.execute()
    return failed


def _queries(middle: datetime) -> dict[str, PageQuery]:
    base = PageQuery(owner="anonymous", limit=21)
    return {
        "no filter": base,
        "states: [FAILURE]": replace(base, states=frozenset({JobState.FAILURE})),
        "states: [PENDING, STARTED]": replace(
            base, states=frozenset({JobState.PENDING, JobState.STARTED})
        ),
        'task: "send_email"': replace(base, task="send_email"),
        "FAILURE + send_email": replace(
            base, states=frozenset({JobState.FAILURE}), task="send_email"
        ),
        "window of 1/1000 of the span": replace(
            base, created_after=middle, created_before=middle + SPAN / 1000
        ),
    }


async def measure(
    store: JobStore, query: PageQuery, oldest: int
) -> tuple[float, float, int, float, float]:
    """p50/p99 (ms) of the first page, its size, and p50/p99 from a cursor in the middle."""
    first: list[float] = []
    for _ in range(SAMPLES):
        began = time.perf_counter()
        page = await store.page(query)
        first.append(time.perf_counter() - began)
    # A cursor anywhere down the listing, as a client deep in a walk would hold.
    every = await store.page(PageQuery(owner="anonymous", limit=1))
    newest = records.to_score(every[0].created_at) if every else 0
    deep: list[float] = []
    for _ in range(SAMPLES):
        after = (random.randint(oldest, newest), "")
        began = time.perf_counter()
        await store.page(replace(query, after=after))
        deep.append(time.perf_counter() - began)
    return (*_p50_p99(first), len(page), *_p50_p99(deep))


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


async def run(sizes: list[int]) -> str:
    valkey = EmbeddedValkey(Path(tempfile.mkdtemp(prefix="jobql-scale-")), persist=False).start()
    settings = Settings(redis_url=valkey.url, env="test", job_retention_seconds=TTL)
    client = connect(valkey.url, settings)
    store = JobStore(client, settings)
    lines = [
        "| stored jobs | filter | first page p50 / p99 (ms) | jobs on it | "
        "mid-listing page p50 / p99 (ms) | memory per job |",
        "|---|---|---|---|---|---|",
    ]
    try:
        baseline = (await client.info("memory"))["used_memory"]
        written = 0
        origin, step = records.now() - SPAN, SPAN / max(sizes)
        for size in sizes:
            began = time.perf_counter()
            await fill(store, written, size, origin, step)
            written = size
            filled = time.perf_counter() - began
            used = (await client.info("memory"))["used_memory"] - baseline
            per_job = f"{used / size:,.0f} B"
            print(f"{size:,} jobs stored ({filled:.0f} s to write)", flush=True)
            for name, query in _queries(origin + step * (size // 2)).items():
                p50, p99, count, deep50, deep99 = await measure(
                    store, query, records.to_score(origin)
                )
                lines.append(
                    f"| {size:,} | {name} | {p50:.2f} / {p99:.2f} | {count} | "
                    f"{deep50:.2f} / {deep99:.2f} | {per_job} |"
                )
                print(lines[-1], flush=True)
    finally:
        await client.aclose()
        valkey.stop()
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    options = parser.parse_args()
    table = asyncio.run(run([int(size) for size in options.sizes.split(",")]))
    print(table)
