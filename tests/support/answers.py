"""What a client is told of one enqueue under a fault, and how long it took to be told: the
stall tests and the late-publish test judge the API by these."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

# A job whose run leaves a mark (tests.support.native_tasks), so a run is never missed.
ENQUEUE = 'mutation { enqueue(task: "reliability.effect", input: {seconds: 0}) { id } }'


@dataclass
class Answer:
    seconds: float
    job_id: str | None = None
    code: str = ""


async def timed_enqueue(http: httpx.AsyncClient, at: float | None = None) -> Answer:
    """One enqueue, sent at monotonic time ``at`` (now when None), and its answer."""
    if at is not None:
        await asyncio.sleep(max(0.0, at - time.monotonic()))
    started = time.monotonic()
    body = (await http.post("/graphql", json={"query": ENQUEUE})).json()
    seconds = time.monotonic() - started
    if body.get("errors"):
        return Answer(seconds, code=body["errors"][0].get("extensions", {}).get("code", "?"))
    return Answer(seconds, job_id=body["data"]["enqueue"]["id"])
