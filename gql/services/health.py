"""Health of what jobs depend on, checked concurrently and bounded in time, and cheap to probe:
each answer is computed at most once per ``JOBQL_HEALTH_CACHE_SECONDS`` however many probes ask,
and workers are never pinged, since their liveness is their heartbeat
(:mod:`tasks.worker.heartbeat`) and a ping is a broadcast every worker must answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
import strawberry

from gql.live.broadcast import PubSubBackend
from gql.services.cache import Cached
from gql.services.producer import Producer
from gql.services.queues import QueueControl
from gql.services.workers import Broker, QueueState, WorkerDirectory
from tasks.core.liveness import WorkerBeat
from tasks.core.refusals import WRITE_PROBE_KEY, WRITE_PROBE_MS, write_refusal

logger = logging.getLogger(__name__)


# The answer's types, decorated for the schema, which serves them as they are.
@strawberry.type(description="One dependency as this API process sees it now.")
class ComponentHealth:
    ok: bool = strawberry.field(description="It answered in time.")
    latency_ms: float | None = strawberry.field(description="How long it took to answer.")
    error: str | None = strawberry.field(description="Why it is not ok.")


@strawberry.type(description="Whether jobs can be enqueued, run, read and watched.")
class Health:
    ok: bool = strawberry.field(description="All components answer and a worker is alive.")
    broker: ComponentHealth = strawberry.field(description="Where jobs wait for a worker.")
    result_backend: ComponentHealth = strawberry.field(description="Where job records live.")
    broadcast: ComponentHealth = strawberry.field(description="Where progress is published.")
    workers: list[str] = strawberry.field(description="Workers with a fresh heartbeat.")


async def _probe(check: Callable[[], Awaitable[object]], limit: float) -> ComponentHealth:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), limit)
    except Exception as exc:
        # A refused write is told in words (it says what to fix); anything else by its type
        # alone, so an unauthenticated probe learns no address from a connection error.
        error = write_refusal(exc) or type(exc).__name__
        return ComponentHealth(ok=False, latency_ms=None, error=error)
    return ComponentHealth(ok=True, latency_ms=(time.perf_counter() - started) * 1000, error=None)


def _component(health: ComponentHealth) -> dict[str, Any]:
    latency = None if health.latency_ms is None else round(health.latency_ms, 3)
    return {"ok": health.ok, "latency_ms": latency, "error": health.error}


class HealthCheck:
    def __init__(
        self,
        records: aioredis.Redis,
        broadcast: PubSubBackend,
        producer: Producer,
        timeout: float,
        *,
        broker: Broker,
        directory: WorkerDirectory,
        cache_seconds: float = 1.0,
    ) -> None:
        self._records = records
        self._broadcast = broadcast
        self._producer = producer
        self._timeout = timeout
        self._broker = broker
        self.directory = directory
        # pauseQueue and resumeQueue: the queues' own state, kept beside the heartbeats.
        self.control = QueueControl(producer, directory)
        self._components = Cached(
            self._check_components, cache_seconds, keep=lambda parts: all(p.ok for p in parts)
        )

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Jobs can be accepted and will run: every component answers and each known queue
        has a live worker consuming it. The body says which part is missing."""
        (broker, records, broadcast), queues = await asyncio.gather(
            self._components.get(), self._queues_or_none()
        )
        consumers = {q.name: list(q.workers) for q in queues or []}
        # A paused queue has no consumer on purpose (pauseQueue): it does not make this
        # process unready, or a pause would take every API replica out of its balancer.
        paused = sorted(q.name for q in queues or [] if q.paused)
        ok = (
            broker.ok
            and records.ok
            and broadcast.ok
            and queues is not None
            and all(workers for name, workers in consumers.items() if name not in paused)
        )
        return ok, {
            "status": "ok" if ok else "unavailable",
            "broker": _component(broker),
            "result_backend": _component(records),
            "broadcast": _component(broadcast),
            "queues": consumers,
            "paused": paused,
        }

    async def report(self) -> Health:
        (broker, records, broadcast), workers = await asyncio.gather(
            self._components.get(), self._workers_or_none()
        )
        names = [w["name"] for w in workers or []]
        return Health(
            ok=records.ok and broadcast.ok and broker.ok and bool(names),
            broker=broker,
            result_backend=records,
            broadcast=broadcast,
            workers=names,
        )

    async def workers(self) -> list[WorkerBeat]:
        return await self.directory.workers()

    async def queues(self) -> list[QueueState]:
        return await self.directory.queues()

    async def _check_components(
        self,
    ) -> tuple[ComponentHealth, ComponentHealth, ComponentHealth]:
        broker, records, broadcast = await asyncio.gather(
            _probe(lambda: self._broker.ping(self._producer.ping_broker), self._timeout * 2),
            _probe(self._records_writable, self._timeout),
            _probe(self._broadcast_alive, self._timeout),
        )
        return broker, records, broadcast

    async def _records_writable(self) -> None:
        """A tiny write, not a PING: a Redis at ``maxmemory`` or unable to persist still
        answers PING while it refuses every job (:mod:`tasks.core.refusals`)."""
        await self._records.set(WRITE_PROBE_KEY, "1", px=WRITE_PROBE_MS)

    async def _broadcast_alive(self) -> None:
        """Published events reach this process only while its pub/sub connection is up."""
        if not self._broadcast.connected.is_set():
            raise ConnectionError("the pub/sub connection is down")
        try:
            await self._broadcast.ping()
        except (aioredis.ConnectionError, OSError):
            # Its client does not retry: a pooled connection from before a Redis restart
            # fails once, while the pub/sub connection itself is back. Ask on a fresh one.
            await self._broadcast.ping()

    async def _workers_or_none(self) -> list[WorkerBeat] | None:
        try:
            return await asyncio.wait_for(self.directory.workers(), self._timeout * 2)
        except Exception:
            return None

    async def _queues_or_none(self) -> list[QueueState] | None:
        try:
            return await asyncio.wait_for(self.directory.queues(), self._timeout * 2)
        except Exception:
            return None

    async def verify_at_startup(self) -> None:
        """Say clearly, once, what this process cannot reach; it serves anyway and reports
        SERVICE_UNAVAILABLE until the part is back (see ``jobql check``)."""
        broker, records, broadcast = await self._check_components()
        for name, health in (("broker", broker), ("Redis (job records)", records),
                             ("broadcast", broadcast)):  # fmt: skip
            if not health.ok:
                logger.error(
                    "cannot reach the %s (%s): jobs cannot be %s until it answers; "
                    "`jobql check` tells what is configured",
                    name,
                    health.error,
                    "enqueued" if name == "broker" else "recorded or watched",
                )
