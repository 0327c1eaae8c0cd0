"""What a worker adds to the declared app when it starts (its bootsteps, its signal receivers,
the configuration only a worker needs), attached from Celery's ``celeryd_init`` (see
:func:`tasks.core.app.create_celery_app`) before the worker reads its consumer class, opens a
connection or forks its pool, whichever command started it (``jobql worker``, or
``celery -A yourproject worker`` in a Django project).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.concurrency import get_implementation
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from tasks.core import compat, run_lease, tracing
from tasks.core.settings import Settings

# Imported for their receivers: revocations and tasks not built on JobTask are recorded in
# signals; per-job log lines and counters in job_metrics; paused queues left out at start.
from tasks.worker import job_metrics, paused, poison, results, signals  # noqa: F401
from tasks.worker.fast_paths import broker_transport
from tasks.worker.heartbeat import Heartbeat
from tasks.worker.reaper import Reaper

logger = logging.getLogger(__name__)


def worker_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration a worker adds: its consumer, its transport, its backends'."""
    config: dict[str, Any] = {
        # A task message the worker cannot run is set aside, never fatal (tasks.worker.poison).
        "worker_consumer": poison.consumer_class(settings),
        # Our patched Redis transport (tasks.worker.broker) on Redis, while its check passes.
        "broker_transport": broker_transport(settings),
    }
    return config | results.worker_options(settings)


def attach(app: Celery, settings: Settings) -> None:
    config = worker_config(settings)
    app.conf.update(config)
    # JobQL's Redis transport keeps a running job's message from a second delivery; with any
    # other transport each run takes its job's lease (tasks.core.run_lease).
    run_lease.wanted = config["broker_transport"] is None
    # The API's /health/stats lists its own entries; a worker's are in its log.
    decided = compat.report()
    logger.info(
        "library internals: %s",
        ", ".join(f"{name} {'on' if e['active'] else 'off'}" for name, e in decided.items()),
    )
    # Each worker writes its liveness and load to Redis (tasks.worker.heartbeat), read by
    # /health; re-queues the running jobs of a worker whose heartbeat stopped
    # (tasks.worker.reaper); deletes expired results from a database backend.
    for step in (Heartbeat, Reaper, results.ResultCleanup):
        app.steps["worker"].add(step)
    if settings.opentelemetry:
        trace_runs(settings)


def trace_runs(settings: Settings) -> None:
    """Tracing (:mod:`tasks.core.tracing`) where tasks run: in each prefork pool process as it
    starts, as OpenTelemetry's Celery instrumentation asks (the SDK's export thread and
    connection are then that process's own), or in the worker itself with another pool. A pool
    process exports what it still holds before it exits (it ends with ``os._exit``, which runs
    no ``atexit``)."""

    def start() -> None:
        if tracing.setup(settings, "worker"):
            job_metrics.start_lines_in_run_spans()

    def in_pool_process(**_: Any) -> None:
        start()

    def in_worker(sender: Any = None, **_: Any) -> None:
        pool = get_implementation(getattr(sender, "pool_cls", None) or "prefork")
        if not (isinstance(pool, type) and issubclass(pool, PreforkPool)):
            start()

    def flush(**_: Any) -> None:
        tracing.shutdown()

    worker_process_init.connect(in_pool_process, weak=False)
    worker_init.connect(in_worker, weak=False)
    worker_process_shutdown.connect(flush, weak=False)
