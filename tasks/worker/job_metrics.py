"""What workers tell about the jobs they run: a log line per transition, and exact counters in
one Redis hash (``jobql:metrics:jobs``), incremented once per run or job by the worker that ran
it, so they add up over any number of workers and every API process serves the same figures
(:mod:`gql.ops.metrics`). Each process writes its figures in one pipeline at most every
``FLUSH_SECONDS`` (and at shutdown), so a job costs no round trip of its own for metrics.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun, task_revoked, worker_process_shutdown

from tasks.core import events
from tasks.core.job_figures import METRICS_KEY, SECONDS_BUCKETS, SEP
from tasks.core.records import JobState, job_key

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 0.5
_FINISHED_STATES = frozenset({JobState.SUCCESS.value, JobState.FAILURE.value})


def _observe(
    counts: Counter[str], sums: dict[str, float], kind: str, task: str, seconds: float
) -> None:
    """The count, the sum, and the one bucket the value falls in.

    Buckets are stored apart (``b``) and made cumulative when read: writing every bound a
    value is under cost up to 13 increments per observation, per job.
    """
    base = f"{kind}{SEP}{task}{SEP}"
    counts[base + "count"] += 1
    sums[base + "sum"] += seconds
    bound = next((bound for bound in SECONDS_BUCKETS if seconds <= bound), None)
    if bound is not None:  # above the last bound: only in the count (+Inf)
        counts[f"{base}b{SEP}{bound}"] += 1


@dataclass
class _Run:
    """A finished run whose figures are not in Redis yet; its queue wait needs its record."""

    job_id: str
    task: str
    state: str
    seconds: float


class _Gathered:
    """This process's figures since the last write, written together by a timer thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: list[_Run] = []
        self._counts: Counter[str] = Counter()  # counters that need no record (revoked)
        self._timer: threading.Timer | None = None

    def add(self, run: _Run | None = None, count: str | None = None) -> None:
        with self._lock:
            if run is not None:
                self._runs.append(run)
            if count is not None:
                self._counts[count] += 1
            if self._timer is None:
                self._timer = threading.Timer(FLUSH_SECONDS, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Write what was gathered: one pipelined read of the records' times, one write."""
        with self._lock:
            runs, counts, self._runs, self._counts = self._runs, self._counts, [], Counter()
            self._timer = None
        if not runs and not counts:
            return
        try:
            _write(runs, counts)
        except redis.RedisError as exc:
            logger.warning("metrics of %d job runs not recorded: %s", len(runs) + len(counts), exc)

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def _write(runs: list[_Run], counts: Counter[str]) -> None:
    client = events.client()
    finished = [run for run in runs if run.state in _FINISHED_STATES]
    times: list[Any] = []
    if finished:
        with client.pipeline(transaction=False) as pipe:
            for run in finished:
                pipe.hmget(job_key(run.job_id), ["created_at", "started_at"])
            times = pipe.execute()
    sums: dict[str, float] = defaultdict(float)
    for run in runs:
        _observe(counts, sums, "run", run.task, run.seconds)
    for run, (created, first_start) in zip(finished, times, strict=True):
        counts[f"finished{SEP}{run.task}{SEP}{run.state}"] += 1
        if created and first_start:
            wait = max(0.0, (_moment(first_start) - _moment(created)).total_seconds())
            _observe(counts, sums, "wait", run.task, wait)
    with client.pipeline(transaction=False) as pipe:
        for name, count in counts.items():
            pipe.hincrby(METRICS_KEY, name, count)
        for name, total in sums.items():
            pipe.hincrbyfloat(METRICS_KEY, name, total)
        pipe.execute()


_gathered = _Gathered()
atexit.register(lambda: _gathered.flush())  # this process's, whichever it is by then


def _forget_in_child() -> None:
    """A pool child starts with nothing gathered and a fresh lock (its parent's figures stay
    the parent's to write, and a lock held at the fork would never be released)."""
    global _gathered
    _gathered = _Gathered()


os.register_at_fork(after_in_child=_forget_in_child)


@worker_process_shutdown.connect
def _on_process_shutdown(**_: Any) -> None:
    _gathered.cancel()
    _gathered.flush()


_runs: dict[str, tuple[float, str | None]] = {}  # job id -> (run began, owner)


@task_prerun.connect
def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not task_id:
        return
    owner = events.owner_of(task_id)
    _runs[task_id] = (time.perf_counter(), owner)
    logger.info(
        "job started",
        extra={"job_id": task_id, "task": getattr(task, "name", None), "owner": owner,
               "state": JobState.STARTED.value},
    )  # fmt: skip


def start_lines_in_run_spans() -> None:
    """Have each run's "job started" line logged inside its run span, with its trace: this
    module's ``task_prerun`` receiver moved after the one OpenTelemetry's Celery instrumentation
    just connected (receivers run in the order they were connected)."""
    task_prerun.disconnect(_on_prerun)
    task_prerun.connect(_on_prerun)


@task_postrun.connect
def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    began = _runs.pop(task_id or "", None)
    if not task_id or began is None or state is None:
        return
    seconds = time.perf_counter() - began[0]
    name = getattr(task, "name", "") or ""
    _gathered.add(_Run(task_id, name, state, seconds))
    logger.info(
        "job run ended",
        extra={"job_id": task_id, "task": name, "owner": began[1], "state": state,
               "duration_ms": round(seconds * 1000, 3)},
    )  # fmt: skip


@task_revoked.connect
def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    task = getattr(sender, "name", "") or ""
    _gathered.add(count=f"finished{SEP}{task}{SEP}{JobState.REVOKED.value}")
    logger.info(
        "job revoked",
        extra={"job_id": request.id, "task": task, "state": JobState.REVOKED.value},
    )


def _moment(text: str | bytes) -> datetime:
    return datetime.fromisoformat(text.decode() if isinstance(text, bytes) else text)
