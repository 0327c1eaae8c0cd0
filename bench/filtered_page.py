"""P12: a filtered page over HTTP as stored jobs pile up, and whether the page is exact.

One job in a hundred failed; ``jobs(first: 50, filter: {states: [FAILURE]})`` must return the
newest 50 of them, in order, whatever else is stored. The records are written straight
through the record scripts (``bench.listing_scale.fill``) into the stack's Valkey; the page
is asked of the API, one request at a time on one connection, as ``P4`` does.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

from bench import httpload
from bench.listing_scale import SPAN, fill
from bench.stack import Stack
from gql.services.store import JobStore, connect
from tasks.core import records
from tasks.core.records import JobState
from tasks.core.settings import Settings

PAGE = "{ jobs(first: 50, filter: {states: [FAILURE]}) { edges { node { id } } } }"


def one_in_a_hundred(n: int) -> JobState:
    return JobState.FAILURE if n % 100 == 7 else JobState.SUCCESS


async def page_latencies(stack: Stack, samples: int, expected: list[str]) -> list[float]:
    """``samples`` pages, timed; each must hold exactly the ``expected`` ids."""
    request = httpload.post_request("127.0.0.1", stack.port, "/graphql", {"query": PAGE})
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    latencies: list[float] = []
    try:
        for _ in range(samples):
            began = time.perf_counter()
            writer.write(request)
            status, body = await httpload._read_response(reader)
            latencies.append(time.perf_counter() - began)
            edges = json.loads(body)["data"]["jobs"]["edges"]
            got = [edge["node"]["id"] for edge in edges]
            if status != 200 or got != expected:
                raise AssertionError(
                    f"P12: the page is not exact ({len(got)} ids, status {status})"
                )
    finally:
        writer.close()
    return latencies


async def filtered_page(
    stack: Stack, sizes: tuple[int, int], samples: int, repetitions: int, owner: str
) -> dict[int, list[list[float]]]:
    """Page latencies with ``sizes[0]`` jobs stored, then with ``sizes[1]``: ``repetitions``
    series of ``samples`` pages at each size (the jobs are written once)."""
    settings = Settings(redis_url=stack.valkey.url, env="test")
    client = connect(stack.valkey.url, settings)
    store = JobStore(client, settings)
    origin = records.now() - SPAN
    step: timedelta = SPAN / sizes[1]
    failed: list[str] = []
    written = 0
    out: dict[int, list[list[float]]] = {}
    try:
        for size in sizes:
            failed += await fill(
                store, written, size, origin, step, owner=owner, state_of=one_in_a_hundred
            )
            written = size
            newest = list(reversed(failed))[:50]
            out[size] = [await page_latencies(stack, samples, newest) for _ in range(repetitions)]
    finally:
        await client.aclose()
    return out
