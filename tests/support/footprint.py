"""What an API process holds for its subscribers, read from outside: to prove nothing leaks.

``/health/stats`` counts the fan-out's channels, subscribers, pending events, locks and the
process's asyncio tasks; ``/proc`` gives its open file descriptors and resident memory;
Redis's ``PUBSUB NUMSUB`` says whether a channel still has a subscriber.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from tasks.core import records


@dataclass(frozen=True)
class Footprint:
    tasks: int
    subscribers: int
    channels: int
    locks: int
    pending_events: int
    fds: int
    rss_mb: float

    def holds_no_more_than(self, baseline: Footprint, *, fd_slack: int = 2) -> bool:
        return (
            self.subscribers <= baseline.subscribers
            and self.channels <= baseline.channels
            and self.locks <= baseline.locks
            and self.pending_events <= baseline.pending_events
            and self.tasks <= baseline.tasks
            and self.fds <= baseline.fds + fd_slack
        )


async def stats(base_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        body: dict[str, Any] = (await http.get("/health/stats")).json()
        return body


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def footprint(base_url: str, pid: int) -> Footprint:
    # Read the stats first: their own HTTP connection is closed again before fds are counted.
    body = await stats(base_url)
    await asyncio.sleep(0.05)
    return Footprint(
        tasks=body["tasks"],
        subscribers=body["subscribers"],
        channels=body["channels"],
        locks=body["locks"],
        pending_events=body["pending_events"],
        fds=_fds(pid),
        rss_mb=rss_mb(pid),
    )


async def back_to(baseline: Footprint, base_url: str, pid: int, within: float = 15) -> Footprint:
    """The process's footprint once it is back to ``baseline`` (or the last one seen)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        now = await footprint(base_url, pid)
        if now.holds_no_more_than(baseline) or asyncio.get_running_loop().time() > deadline:
            return now
        await asyncio.sleep(0.2)


async def numsub(redis_url: str, job_ids: list[str]) -> int:
    """How many subscriptions Redis still counts on these jobs' channels."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        channels = [records.job_channel(job_id) for job_id in job_ids]
        counts = await client.pubsub_numsub(*channels) if channels else []
        return sum(int(count) for _, count in counts)
    finally:
        await client.aclose()
