"""Health of what jobs depend on, checked concurrently and bounded in time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from gql.broadcast import RedisPubSubBackend
from gql.producer import Producer
from gql.types import ComponentHealth, Health


async def _probe(check: Callable[[], Awaitable[object]], limit: float) -> ComponentHealth:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), limit)
    except Exception as exc:
        return ComponentHealth(ok=False, latency_ms=None, error=type(exc).__name__)
    return ComponentHealth(ok=True, latency_ms=(time.perf_counter() - started) * 1000, error=None)


class HealthCheck:
    def __init__(
        self,
        records: aioredis.Redis,
        broadcast: RedisPubSubBackend,
        producer: Producer,
        timeout: float,
    ) -> None:
        self._records = records
        self._broadcast = broadcast
        self._producer = producer
        self._timeout = timeout

    async def ready(self) -> bool:
        """Enough to accept jobs: records and broker answer."""
        records, broker = await asyncio.gather(
            _probe(self._records.ping, self._timeout),
            _probe(self._producer.ping_broker, self._timeout * 2),
        )
        return records.ok and broker.ok

    async def report(self) -> Health:
        records, broadcast, broker, workers = await asyncio.gather(
            _probe(self._records.ping, self._timeout),
            _probe(self._broadcast_alive, self._timeout),
            _probe(self._producer.ping_broker, self._timeout * 2),
            self._workers(),
        )
        return Health(
            ok=records.ok and broadcast.ok and broker.ok and bool(workers),
            broker=broker,
            result_backend=records,
            broadcast=broadcast,
            workers=workers,
        )

    async def _broadcast_alive(self) -> None:
        """Published events reach this process only while its pub/sub connection is up."""
        if not self._broadcast.connected.is_set():
            raise ConnectionError("the pub/sub connection is down")
        await self._broadcast.ping()

    async def _workers(self) -> list[str]:
        try:
            return await asyncio.wait_for(self._producer.workers(), self._timeout * 2)
        except Exception:
            return []
