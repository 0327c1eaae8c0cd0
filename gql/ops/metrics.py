"""``GET /metrics`` in Prometheus' text format: this process's own figures (operations, jobs
enqueued, live subscriptions, events delivered), summed over ``jobql api --workers N`` through
``PROMETHEUS_MULTIPROC_DIR``, and the jobs' (finished, run time, queue wait), counted once by the
worker that ran each job in a Redis hash (:mod:`tasks.worker.job_metrics`), so every process
serves the same. Hot paths pay one counter increment; events are tallied in plain integers and
copied into the counters every second (:func:`sync_forever`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response

from gql.live.broadcast import JobBroadcast
from tasks.core import job_figures
from tasks.core.job_figures import METRICS_KEY
from tasks.core.job_figures import Histogram as JobHistogram
from tasks.core.liveness import WorkerBeat

logger = logging.getLogger(__name__)

MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

JOBS_ENQUEUED = Counter("jobql_jobs_enqueued", "Jobs enqueued by this API.", ["task"])
OPERATIONS = Counter(
    "jobql_graphql_operations",
    "GraphQL operations by name, type and outcome (ok, error).",
    ["operation", "type", "outcome"],
)
OPERATION_SECONDS = Histogram(
    "jobql_graphql_operation_seconds",
    "Time from parsing to the result; for subscriptions, their whole life.",
    ["operation", "type"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600),
)
SUBSCRIPTIONS = Gauge(
    "jobql_subscriptions_active",
    "Subscriptions open now, by transport.",
    ["transport"],
    multiprocess_mode="livesum",
)
EVENTS_DELIVERED = Counter("jobql_events_delivered", "Job events handed to subscribers' queues.")
EVENTS_COALESCED = Counter(
    "jobql_events_coalesced",
    "Progress events replaced by a newer one before a slow reader took them.",
)
LOOP_LAG = Histogram(
    "jobql_event_loop_lag_seconds",
    "How late the event loop ran a timer due every 10 ms: a stall delays every request by as much.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)
BROADCAST_RECONNECTS = Counter(
    "jobql_broadcast_reconnects", "Times the pub/sub connection to Redis was restored."
)

# Operation names come from clients: past this many distinct ones, the rest count as "other".
_MAX_OPERATION_NAMES = 200
_names: set[str] = set()


def operation_label(name: str | None) -> str:
    if not name:
        return "anonymous"
    if name in _names:
        return name
    if len(_names) < _MAX_OPERATION_NAMES:
        _names.add(name)
        return name
    return "other"


class _JobFigures:
    """The workers' job counters, as read from Redis for one scrape."""

    def __init__(self, figures: job_figures.JobFigures) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "jobql_jobs_finished",
            "Jobs ended by a worker, by task and final state.",
            labels=["task", "state"],
        )
        for (task, state), count in sorted(self._figures.finished.items()):
            finished.add_metric([task, state], count)
        yield finished
        yield _histogram(
            "jobql_job_run_seconds", "Run time of each run on a worker.",
            self._figures.run_seconds,
        )  # fmt: skip
        yield _histogram(
            "jobql_job_queue_wait_seconds",
            "From creation (countdown and ETA included) to the first start.",
            self._figures.queue_wait_seconds,
        )


class _Workers:
    def __init__(self, workers: list[WorkerBeat], pending: dict[str, int]) -> None:
        self._workers = workers
        self._pending = pending

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("jobql_workers_live", "Workers with a fresh heartbeat.",
                                value=len(self._workers))  # fmt: skip
        # Per worker, from the same heartbeats: busy pool slots against the pool's size.
        active = GaugeMetricFamily(
            "jobql_worker_tasks_active", "Jobs a worker is running now.", labels=["worker"]
        )
        slots = GaugeMetricFamily(
            "jobql_worker_concurrency", "A worker's pool size (jobs it can run at once).",
            labels=["worker"],
        )  # fmt: skip
        for beat in self._workers:
            active.add_metric([beat["name"]], beat["active"])
            slots.add_metric([beat["name"]], beat["concurrency"])
        yield active
        yield slots
        pending = GaugeMetricFamily(
            "jobql_queue_pending", "Messages waiting in the broker, by queue.", labels=["queue"]
        )
        for name, count in sorted(self._pending.items()):
            pending.add_metric([name], count)
        yield pending


def _histogram(name: str, documentation: str, by_task: dict[str, JobHistogram]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=["task"])
    for task, histogram in sorted(by_task.items()):
        buckets: list[tuple[str, float]] = [
            (str(bound), float(count)) for bound, count in sorted(histogram.buckets.items())
        ]
        buckets.append(("+Inf", float(histogram.count)))
        family.add_metric([task], buckets, sum_value=histogram.sum)
    return family


def _exposition(shared: list[Any]) -> bytes:
    """Runs on a thread: multi-process mode reads every process's file."""
    if MULTIPROCESS:
        own = CollectorRegistry()
        multiprocess.MultiProcessCollector(own)  # type: ignore[no-untyped-call]
    else:
        own = REGISTRY
    extra = CollectorRegistry(auto_describe=False)
    for collector in shared:
        extra.register(collector)
    return generate_latest(own) + generate_latest(extra)


async def metrics(request: Request) -> Response:
    state = request.app.state
    records: aioredis.Redis = state.records
    shared: list[Any] = []
    try:
        fields: dict[str, str] = await records.hgetall(METRICS_KEY)  # type: ignore[assignment]
        shared.append(_JobFigures(job_figures.parse(fields)))
        workers, queues = await asyncio.gather(state.health.workers(), state.health.queues())
        shared.append(_Workers(workers, {q.name: q.pending for q in queues}))
    except Exception as exc:  # Redis down: this process's figures still help
        logger.warning("/metrics without the job figures: %s", type(exc).__name__)
    body = await asyncio.to_thread(_exposition, shared)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def sync_forever(broadcast: JobBroadcast, every: float = 1.0) -> None:
    """Copy the broadcast's plain event tallies into the counters, once a second."""
    seen = {"delivered": 0, "coalesced": 0, "reconnects": 0}
    while True:
        await asyncio.sleep(every)
        sync(broadcast, seen)


def sync(broadcast: JobBroadcast, seen: dict[str, int]) -> None:
    now = {
        "delivered": broadcast.tally.delivered,
        "coalesced": broadcast.tally.coalesced,
        "reconnects": broadcast.backend.reconnects,
    }
    for name, counter in (("delivered", EVENTS_DELIVERED), ("coalesced", EVENTS_COALESCED),
                          ("reconnects", BROADCAST_RECONNECTS)):  # fmt: skip
        if now[name] > seen[name]:
            counter.inc(now[name] - seen[name])
    seen.update(now)


def process_exited() -> None:
    """A live gauge of an ended process must stop counting (multi-process mode only)."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
