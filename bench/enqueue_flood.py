"""Enqueue N jobs through ONE API process and show it never stalls.

With Celery's Redis result backend, every ``apply_async`` in a long-lived producer subscribes
to that task's result channel; nothing reads them and the producer blocks for good after
~138,000 enqueues (Celery #3808, #6963). JobQL publishes through a producer-side app without
a result backend. This script proves it end to end: an embedded Valkey, one uvicorn API
process, no worker (messages pile up in the queue), and N typed mutations over HTTP from an
asyncio client in this process. It prints throughput per slice (a stall shows as a slice
that never ends), the API's subscriptions on Redis at the end (must be 0), and its RSS.

    .venv/bin/python bench/enqueue_flood.py --jobs 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gql.devserver import EmbeddedValkey, api_command, free_port, stop_all, wait_for_port  # noqa: E402

MUTATION = "mutation($i: ProcessDataInput!) { processData(input: $i) { id } }"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def flood(url: str, jobs: int, concurrency: int, slice_size: int, deadline: float) -> dict:
    sent = completed = 0
    errors = 0
    slices: list[float] = []
    started = slice_started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal errors
            body = {"query": MUTATION, "variables": {"i": {"data": i, "delay": 0}}}
            response = await client.post("/graphql", json=body)
            if response.status_code != 200 or "errors" in response.json():
                errors += 1

        async def lane() -> None:
            nonlocal sent, completed, slice_started
            while sent < jobs and time.monotonic() < deadline:
                sent += 1
                await one(sent)
                completed += 1
                if completed % slice_size == 0:
                    now = time.perf_counter()
                    slices.append(slice_size / (now - slice_started))
                    slice_started = now
                    print(f"  {completed:>7} enqueued, {slices[-1]:7.0f} req/s", flush=True)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"sent": completed, "errors": errors, "seconds": elapsed, "slices_per_s": slices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1200)
    args = parser.parse_args()

    data = Path(tempfile.mkdtemp(prefix="jobql-flood-"))
    valkey = EmbeddedValkey(data / "valkey").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_")}
    env.update(JOBQL_REDIS_URL=valkey.url, JOBQL_DATA_DIR=str(data), PYTHONPATH=str(ROOT))
    port = free_port()
    with (data / "api.log").open("wb") as log:
        api = subprocess.Popen(
            api_command("127.0.0.1", port), env=env, cwd=ROOT, stdout=log, stderr=log
        )
    try:
        wait_for_port(port, 30, api)
        rss_before = rss_kib(api.pid)
        deadline = time.monotonic() + args.max_seconds
        slice_size = max(1, args.jobs // 10)
        result = asyncio.run(
            flood(f"http://127.0.0.1:{port}", args.jobs, args.concurrency, slice_size, deadline)
        )
        client = redis.Redis.from_url(valkey.url, decode_responses=True)
        subscribed = [
            c for c in client.client_list() if int(c.get("sub", 0)) or int(c.get("psub", 0))
        ]
        result.update(
            queued=client.llen("jobql"),
            subscribed_clients=len(subscribed),
            channels=len(client.pubsub_channels()),
            api_rss_kib_before=rss_before,
            api_rss_kib_after=rss_kib(api.pid),
        )
        client.close()
    finally:
        stop_all([api])
        valkey.stop()
    result["mean_per_s"] = result["sent"] / result["seconds"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
