"""Worker liveness without a broadcast: each worker writes its state to one Redis key every few
seconds with a TTL of three beats, and the API reads them all in one script call, where Celery's
ping or inspect makes every worker answer and waits for the slowest. A thread of the worker's
main process beats whatever the pool; each start draws an incarnation id, beaten and stamped on
the jobs it starts, since a restarted worker reuses its name and :mod:`tasks.worker.reaper` must
know whether a run's own worker lives.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from celery import bootsteps
from celery.signals import worker_shutdown, worker_shutting_down
from celery.worker import state

from tasks.core import redis_clients
from tasks.core.durability import warn_if_not_durable
from tasks.core.liveness import (
    WorkerBeat,
    begin_incarnation,
    incarnation_prefix,
    worker_key,
    workers_key,
)
from tasks.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def _queues(worker: Any) -> list[str]:
    """The queues the worker consumes now: ``cancel_consumer`` takes one out of this set."""
    return sorted(worker.app.amqp.queues.consume_from)  # none at all when every one is paused


def _pool_name(worker: Any) -> str:
    pool = getattr(worker, "pool", None)
    module = type(pool).__module__ if pool is not None else str(worker.pool_cls)
    return module.rsplit(".", 1)[-1]


class Heartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Writes this worker's :class:`WorkerBeat` every ``JOBQL_WORKER_HEARTBEAT_INTERVAL``."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._started_at = datetime.now(UTC).isoformat()
        self._incarnation = begin_incarnation()

    def start(self, worker: Any) -> None:
        settings = get_settings()
        # The process's one client, shared with the job events and the reaper.
        self._client = redis_clients.worker_client()
        warn_if_not_durable(self._client, "the Redis holding jobs")
        self._thread = threading.Thread(
            target=self._beat_forever, args=(worker, settings), name="jobql-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        """A warm shutdown: beat on until the pool has finished the running jobs.

        Celery stops this step before the pool, whose own stop waits for the jobs. A worker
        that went quiet here was taken for lost by another worker's reaper, and a job still
        running here started a second time there (measured: an 8 s job, SIGTERM, a second
        worker alive: two runs at once). ``worker_shutdown``, which Celery sends once the
        pool is done, ends the beat; a cold shutdown kills the jobs and lets the beat expire.
        """
        _finishing.append(lambda: self._finish(worker))

    def _finish(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._client is not None:
            settings = get_settings()
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    pipe.delete(worker_key(settings, worker.hostname))
                    pipe.delete(incarnation_prefix(settings) + self._incarnation)
                    pipe.srem(workers_key(settings), worker.hostname)
                    pipe.execute()
            except redis.RedisError:
                logger.warning("could not remove the heartbeat of %s; it expires by itself",
                               worker.hostname)  # fmt: skip

    shutdown = stop

    def _beat_forever(self, worker: Any, settings: Settings) -> None:
        while not self._stop.is_set():
            try:
                self.beat(worker, settings)
            except Exception as exc:
                logger.warning("heartbeat of %s not written: %s", worker.hostname, exc)
            self._stop.wait(settings.worker_heartbeat_interval)

    def beat(self, worker: Any, settings: Settings) -> None:
        assert self._client is not None
        active = len(state.active_requests)
        beat = WorkerBeat(
            name=worker.hostname,
            status="stopping" if _stopping.is_set() else "online",
            pid=os.getpid(),
            pool=_pool_name(worker),
            concurrency=int(worker.concurrency or 0),
            queues=_queues(worker),
            active=active,
            reserved=max(0, len(state.reserved_requests) - active),
            processed=sum(state.total_count.values()),
            heartbeat=datetime.now(UTC).isoformat(),
            started_at=self._started_at,
            incarnation=self._incarnation,
        )
        ttl = int(settings.heartbeat_ttl * 1000)
        with self._client.pipeline(transaction=False) as pipe:
            pipe.set(worker_key(settings, worker.hostname), json.dumps(beat), px=ttl)
            pipe.set(incarnation_prefix(settings) + self._incarnation, worker.hostname, px=ttl)
            pipe.sadd(workers_key(settings), worker.hostname)
            pipe.execute()


_stopping = threading.Event()


@worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    _stopping.set()


# The beats to end once the worker's pool has stopped (see Heartbeat.stop).
_finishing: list[Callable[[], None]] = []


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    while _finishing:
        _finishing.pop()()
