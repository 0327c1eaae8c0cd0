"""Enqueue N jobs through ONE API process and show it never stalls.

With Celery's Redis result backend, every ``apply_async`` in a long-lived producer subscribes
to that task's result channel; nothing reads them and the producer blocks for good after
~138,000 enqueues (Celery #3808, #6963). JobQL publishes through a producer-side app without
a result backend. This script proves it end to end: an embedded Valkey, one uvicorn API
process, no worker (messages pile up in the queue), and N typed mutations over HTTP from a
lean asyncio client (``bench/httpload.py``) in this process. It prints throughput per slice
(a stall shows as a slice that never ends), the API's subscriptions on Redis at the end
(must be 0), and its RSS.

    .venv/bin/python -m bench.enqueue_flood --jobs 200000
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import redis
import uvloop

from bench import httpload
from bench.stack import rss_kib, running_stack

MUTATION = "mutation($i: ProcessDataInput!) { processData(input: $i) { id } }"


def flood(port: int, jobs: int, concurrency: int, deadline: float) -> dict[str, Any]:
    slice_size = max(1, jobs // 20)
    slices: list[float] = []
    mark = [time.perf_counter()]

    def progress(done: int) -> None:
        if done % slice_size == 0:
            now = time.perf_counter()
            slices.append(round(slice_size / (now - mark[0])))
            mark[0] = now
            print(f"  {done:>7} enqueued, {slices[-1]:6d} req/s", flush=True)

    def request(n: int) -> bytes:
        body = {"query": MUTATION, "variables": {"i": {"data": n, "delay": 0}}}
        return httpload.post_request("127.0.0.1", port, "/graphql", body)

    result = uvloop.run(
        httpload.run(
            "127.0.0.1",
            port,
            request,
            total=jobs,
            concurrency=concurrency,
            ok=lambda status, body: status == 200 and b'"errors"' not in body,
            on_progress=progress,
            deadline=deadline,
        )
    )
    latencies = sorted(result.latencies)
    return {
        "completed": result.completed,
        "failed": result.failed,
        "first_failure": result.first_failure,
        "seconds": round(result.seconds, 1),
        "mean_per_s": round(result.per_second),
        "slices_per_s": slices,
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "max_ms": round(latencies[-1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=1200)
    args = parser.parse_args()

    with running_stack(worker=False) as stack:
        rss_before = rss_kib(stack.api.pid)
        deadline = time.monotonic() + args.max_seconds
        result = flood(stack.port, args.jobs, args.concurrency, deadline)
        client = redis.Redis.from_url(stack.valkey.url, decode_responses=True)
        subscribed = [
            c for c in client.client_list() if int(c.get("sub", 0)) or int(c.get("psub", 0))
        ]
        result.update(
            queued=client.llen("jobql"),
            # The API's own broadcast listener is the one subscribed client expected.
            subscribed_clients=len(subscribed),
            channels=client.pubsub_channels(),
            api_rss_kib_before=rss_before,
            api_rss_kib_after=rss_kib(stack.api.pid),
        )
        client.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
