"""A task written the usual Celery way, loaded by the test services next to the examples."""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

from celery import Task

from tasks.core.app import celery_app
from tasks.core.progress import JobContext


@celery_app.task(bind=True, name="native.countdown")
def countdown(self: Any, n: int = 3, delay: float = 0.1) -> dict[str, int]:
    """Count to n, reporting progress with Celery's own update_state."""
    for i in range(1, n + 1):
        time.sleep(delay)
        self.update_state(state="PROGRESS", meta={"current": i, "total": n, "status": "counting"})
    return {"counted": n}


# The side effect of a reliability test's job, keyed by the job id: a run that finds the
# key set does not do it again. Every run is counted apart, to see re-runs.
RUNS_KEY = "jobql:test:runs:"
EFFECTS_KEY = "jobql:test:effects"
# Each run's "start end" (Unix seconds), pushed when it ends: two runs must never overlap.
SPANS_KEY = "jobql:test:spans:"


@celery_app.task(bind=True, name="reliability.effect")
def effect(self: Any, seconds: float = 1.0, die: bool = False) -> dict[str, int]:
    """Report this run's pid, wait ``seconds`` (or kill its own process), then do the effect."""
    from tasks.core.events import client

    redis = client()
    pid = os.getpid()
    start = time.time()
    redis.rpush(RUNS_KEY + self.request.id, pid)
    self.update_state(state="PROGRESS", meta={"current": 0, "total": 1, "data": {"pid": pid}})
    if die:
        os.kill(pid, signal.SIGKILL)
    time.sleep(seconds)
    first = redis.hsetnx(EFFECTS_KEY, self.request.id, pid)
    redis.rpush(SPANS_KEY + self.request.id, f"{start} {time.time()}")
    return {"pid": pid, "effect": int(first)}


# Set by a test once it watches a job of ``timeline.chatty``: the job waits for it, so the
# watcher sees every line arrive.
GATE_KEY = "jobql:test:gate:"


@celery_app.task(bind=True, name="timeline.chatty")
def chatty(self: Any, lines: int = 3, pause: float = 0.05) -> dict[str, int]:
    """Once the test says go, log ``lines`` lines between progress reports, the last one a
    warning, then one line through Python's logging."""
    from tasks.core.events import client

    job = JobContext(self)
    deadline = time.monotonic() + 20
    while not client().exists(GATE_KEY + job.id) and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(1, lines + 1):
        job.log(f"line {i} of {lines}", level="warning" if i == lines else "info")
        job.progress(i, lines, f"step {i}")
        time.sleep(pause)
    logging.getLogger("tests.chatty").info("done after %d lines", lines)
    return {"lines": lines}


@celery_app.task(bind=True, name="timeline.flaky", max_retries=1)
def flaky(self: Any) -> None:
    """Fail, retry at once, then fail for good. At once: another pool process may start the
    retry while this one is still in Celery's retry, and the record must still say RETRY,
    then STARTED (tasks.core.base.JobTask.retry), never a lost worker."""
    if not self.request.retries:
        raise self.retry(exc=ValueError("first try fails"), countdown=0)
    raise RuntimeError("second try fails too")


@celery_app.task(name="native.total")
def total(values: Any) -> int:
    """A chord's body: the sum of its header's ``counted``, however the header nests them."""
    if isinstance(values, dict):
        return int(values.get("counted", 0))
    return sum(total(value) for value in values)


@celery_app.task(name="plain.boom", base=Task)
def boom(message: str = "boom") -> None:
    """A task on Celery's own base class, not JobTask: recorded through the worker's signals."""
    raise KeyError(message)
