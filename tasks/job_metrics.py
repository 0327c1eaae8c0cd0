"""What workers tell about the jobs they run: a log line per transition, and exact counters.

The counters live in one Redis hash (``jobql:metrics:jobs``), incremented by the worker that
ran the job, once per run or per job: they add up across any number of workers and API
processes, and every API process serves the same figures on ``/metrics`` (``gql.metrics``).
A job counts as finished when a worker ends it: SUCCESS or FAILURE after its last run, or
REVOKED when a worker drops or terminates it. Run time is measured around each run in the
worker; queue wait is from the job's creation (countdown and ETA included) to its first
start, taken from its record once it finished.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from celery.signals import task_postrun, task_prerun, task_revoked

from tasks import events
from tasks.records import PREFIX, JobState, job_key

logger = logging.getLogger(__name__)

METRICS_KEY = f"{PREFIX}:metrics:jobs"
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
_SEP = "|"
_FINISHED_STATES = frozenset({JobState.SUCCESS.value, JobState.FAILURE.value})


@dataclass
class Histogram:
    """Cumulative counts per upper bound, as Prometheus wants them."""

    buckets: dict[float, int] = field(default_factory=dict)
    count: int = 0
    sum: float = 0.0


@dataclass
class JobFigures:
    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (task, state)
    run_seconds: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    queue_wait_seconds: dict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))


def _observe(pipe: Any, kind: str, task: str, seconds: float) -> None:
    """Three increments: the count, the sum, and the one bucket the value falls in.

    Buckets are stored apart (``b``) and made cumulative when read: writing every bound a
    value is under cost up to 13 increments per observation, per job.
    """
    base = f"{kind}{_SEP}{task}{_SEP}"
    pipe.hincrby(METRICS_KEY, base + "count", 1)
    pipe.hincrbyfloat(METRICS_KEY, base + "sum", seconds)
    bound = next((bound for bound in SECONDS_BUCKETS if seconds <= bound), None)
    if bound is not None:  # above the last bound: only in the count (+Inf)
        pipe.hincrby(METRICS_KEY, f"{base}b{_SEP}{bound}", 1)


def parse(fields: dict[str, str]) -> JobFigures:
    """The hash as figures; every bucket bound is present, a missing one counts zero.

    Fields are ``finished|<task>|<state>``, ``run|<task>|count``, ``run|<task>|sum`` and
    ``run|<task>|b|<bound>``, one value per bucket, not cumulative (``wait`` likewise); a
    task name may hold the separator. ``run|<task>|le|<bound>``, cumulative, is how
    earlier workers wrote them: both add up.
    """
    figures = JobFigures()
    for name, value in fields.items():
        kind, _, rest = name.partition(_SEP)
        head, _, last = rest.rpartition(_SEP)
        if kind == "finished":
            figures.finished[(head, last)] = int(value)
            continue
        target = {"run": figures.run_seconds, "wait": figures.queue_wait_seconds}.get(kind)
        if target is None:
            continue
        if last == "count":
            target[head].count = int(value)
        elif last == "sum":
            target[head].sum = float(value)
        else:
            task, _, marker = head.rpartition(_SEP)
            buckets = target[task].buckets
            bound = float(last)
            if marker == "b":  # counts every bound from this one up
                for upper in SECONDS_BUCKETS:
                    if upper >= bound:
                        buckets[upper] = buckets.get(upper, 0) + int(value)
            else:
                buckets[bound] = buckets.get(bound, 0) + int(value)
    for histograms in (figures.run_seconds, figures.queue_wait_seconds):
        for histogram in histograms.values():
            for bound in SECONDS_BUCKETS:
                histogram.buckets.setdefault(bound, 0)
    return figures


_runs: dict[str, float] = {}


@task_prerun.connect
def _on_prerun(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    if not task_id:
        return
    _runs[task_id] = time.perf_counter()
    owner = events.owner_of(task_id)
    logger.info(
        "job started",
        extra={"job_id": task_id, "task": getattr(task, "name", None), "owner": owner,
               "state": JobState.STARTED.value},
    )  # fmt: skip


@task_postrun.connect
def _on_postrun(
    task_id: str | None = None, task: Any = None, state: str | None = None, **_: Any
) -> None:
    started = _runs.pop(task_id or "", None)
    if not task_id or started is None or state is None:
        return
    seconds = time.perf_counter() - started
    name = getattr(task, "name", "") or ""
    try:
        _record_run(task_id, name, state, seconds)
    except redis.RedisError as exc:
        logger.warning("metrics of job %s not recorded: %s", task_id, exc)


def _record_run(job_id: str, task: str, state: str, seconds: float) -> None:
    client = events.client()
    owner: Any = None
    wait: float | None = None
    if state in _FINISHED_STATES:
        created, first_start, owner = client.hmget(
            job_key(job_id), ["created_at", "started_at", "owner"]
        )
        if created and first_start:
            wait = max(0.0, (_moment(first_start) - _moment(created)).total_seconds())
    with client.pipeline(transaction=False) as pipe:
        _observe(pipe, "run", task, seconds)
        if state in _FINISHED_STATES:
            pipe.hincrby(METRICS_KEY, f"finished{_SEP}{task}{_SEP}{state}", 1)
            if wait is not None:
                _observe(pipe, "wait", task, wait)
        pipe.execute()
    logger.info(
        "job run ended",
        extra={"job_id": job_id, "task": task, "owner": owner, "state": state,
               "duration_ms": round(seconds * 1000, 3)},
    )  # fmt: skip


@task_revoked.connect
def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None:
        return
    task = getattr(sender, "name", "") or ""
    try:
        field = f"finished{_SEP}{task}{_SEP}{JobState.REVOKED.value}"
        events.client().hincrby(METRICS_KEY, field, 1)
    except redis.RedisError as exc:
        logger.warning("metrics of job %s not recorded: %s", request.id, exc)
    logger.info(
        "job revoked",
        extra={"job_id": request.id, "task": task, "state": JobState.REVOKED.value},
    )


def _moment(text: str | bytes) -> datetime:
    return datetime.fromisoformat(text.decode() if isinstance(text, bytes) else text)
