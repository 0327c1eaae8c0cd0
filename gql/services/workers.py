"""Workers and queues as the API sees them, never through a broadcast: workers from their
heartbeat keys (:mod:`tasks.worker.heartbeat`) in one script call, queue lengths from the broker
(one pipelined LLEN per priority list on Redis, a passive declare on RabbitMQ, on a thread since
kombu blocks) with the paused ones (:mod:`tasks.core.paused_queues`), both cached for
``JOBQL_INSPECT_CACHE_SECONDS``, so dashboards polling them cannot load Redis or the workers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gql.services.cache import Cached
from tasks.core import redis_clients
from tasks.core.liveness import READ_SCRIPT, WorkerBeat, worker_prefix, workers_key
from tasks.core.messages import PRIORITY_STEPS, queue_key
from tasks.core.paused_queues import paused_key
from tasks.core.settings import Settings


@dataclass(frozen=True, slots=True)
class QueueState:
    name: str
    pending: int  # messages waiting in the broker, not yet delivered to a worker
    workers: tuple[str, ...]  # live workers consuming it
    paused: dict[str, str] | None = None  # since when and by whom (pauseQueue), or None


class Broker:
    """The broker's queue lengths and its reachability, without a thread on Redis."""

    def __init__(self, settings: Settings, records: aioredis.Redis) -> None:
        self._settings = settings
        self._client: aioredis.Redis | None = None
        self._own_client = False
        if redis_clients.is_redis(settings.broker):
            if settings.broker == settings.redis:
                self._client = records
            else:
                self._client = redis_clients.async_client(settings.broker, settings, decode=False)
                self._own_client = True

    async def ping(self, fallback: Any) -> None:
        """A PING on Redis; on another broker, ``fallback`` (a fresh connection on a thread)."""
        if self._client is not None:
            await self._client.ping()
        else:
            await fallback()

    async def pending(self, queues: list[str]) -> dict[str, int]:
        if self._client is None:
            return await asyncio.to_thread(self._declared_lengths, queues)
        async with self._client.pipeline(transaction=False) as pipe:
            for name in queues:
                for priority in PRIORITY_STEPS:
                    pipe.llen(queue_key(name, priority))
            lengths = await pipe.execute()
        steps = len(PRIORITY_STEPS)
        return {name: sum(lengths[i * steps : (i + 1) * steps]) for i, name in enumerate(queues)}

    def _declared_lengths(self, queues: list[str]) -> dict[str, int]:
        from kombu.connection import Connection

        counts: dict[str, int] = {}
        timeout = self._settings.connect_timeout
        with Connection(self._settings.broker, connect_timeout=timeout) as c:  # type: ignore[no-untyped-call]
            channel = c.default_channel
            for name in queues:
                try:
                    _, count, _ = channel.queue_declare(queue=name, passive=True)
                except Exception:
                    count = 0  # not declared yet: nothing was ever sent to it
                    channel = c.channel()
                counts[name] = int(count)
        return counts

    async def close(self) -> None:
        if self._own_client and self._client is not None:
            await redis_clients.aclose(self._client)


class WorkerDirectory:
    """Live workers and the known queues, each answer cached for a few seconds."""

    def __init__(
        self, settings: Settings, records: aioredis.Redis, broker: Broker, queues: frozenset[str]
    ) -> None:
        self.settings = settings
        self.client = records  # the single Redis of the heartbeats and the paused queues
        self._records = records
        self._broker = broker
        self._queues = sorted(queues)
        self._key = workers_key(settings)
        self._prefix = worker_prefix(settings)
        self._paused_key = paused_key(settings)
        self._workers = Cached(self._read_workers, settings.inspect_cache_seconds)
        self._queue_states = Cached(self._read_queues, settings.inspect_cache_seconds)

    @property
    def known_queues(self) -> list[str]:
        return list(self._queues)

    async def workers(self) -> list[WorkerBeat]:
        return await self._workers.get()

    async def queues(self) -> list[QueueState]:
        return await self._queue_states.get()

    async def _read_workers(self) -> list[WorkerBeat]:
        beats = await self._records.eval(READ_SCRIPT, 1, self._key, self._prefix)
        return sorted((json.loads(b) for b in beats), key=lambda b: b["name"])

    def forget(self) -> None:
        """Read workers and queues afresh next time (a queue was paused or resumed)."""
        self._workers.forget()
        self._queue_states.forget()

    async def read_workers(self) -> list[WorkerBeat]:
        """The live workers now, not from the cache."""
        return await self._read_workers()

    async def _read_queues(self) -> list[QueueState]:
        pending, workers, paused = await asyncio.gather(
            self._broker.pending(self._queues),
            self.workers(),
            self._records.hgetall(self._paused_key),
        )
        return [
            QueueState(
                name=name,
                pending=pending.get(name, 0),
                workers=tuple(w["name"] for w in workers if name in w["queues"]),
                paused=json.loads(paused[name]) if name in paused else None,
            )
            for name in self._queues
        ]
