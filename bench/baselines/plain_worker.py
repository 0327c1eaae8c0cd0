"""P10's baseline: the same trivial work as plain ``@app.task`` functions, stock Celery.

Celery's Redis result backend, JSON, and the worker settings JobQL's own worker runs with
(late acknowledgement, prefetch 1, started state tracked, extended results), so the figure
compares what JobQL adds per job, not a different tuning. Its worker is started with
``celery -A bench.baselines.plain_worker worker -Q plain`` and ``BENCH_REDIS_URL`` set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery, Task

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = "plain"

CONFIG: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "timezone": "UTC",
    "enable_utc": True,
    "task_track_started": True,
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "result_extended": True,
    "worker_prefetch_multiplier": 1,
    "task_default_queue": QUEUE,
}


def create_app(url: str) -> Celery:
    """The baseline's app on ``url``: the worker's, or a producer's in the bench process."""
    app = Celery("plain_baseline", broker=url, backend=url)
    app.conf.update(CONFIG)
    return app


celery = create_app(REDIS_URL)


@celery.task(name="plain.trivial")
def trivial(n: int) -> dict[str, Any]:
    """What ``bench.trivial`` does, as a stock task."""
    return {"n": n}


@celery.task(bind=True, name="plain.progress")
def progress(self: Task, reports: int) -> dict[str, Any]:
    """``reports`` progress reports through stock ``update_state``; the body's own time."""
    began = time.perf_counter()
    for n in range(1, reports + 1):
        self.update_state(state="PROGRESS", meta={"current": n, "total": reports})
    return {"seconds": time.perf_counter() - began}
