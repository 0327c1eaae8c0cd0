"""Recording what :class:`tasks.core.base.JobTask`'s hooks cannot see, through Celery's signals:
a revocation, which the worker decides before (or instead of) running the task, and the runs of
tasks not built on JobTask (an explicit ``base=``), recorded as plain Celery jobs owned by
``anonymous``.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    task_revoked,
    task_success,
)

from tasks.core import events, liveness, run_lease
from tasks.core.base import JobTask, owner_hint, recorded

logger = logging.getLogger(__name__)


def _foreign(task: Any) -> bool:
    """A task of this worker that JobTask's hooks do not record (and that is a job at all:
    a webhook delivery is logged on what it delivers, see tasks.worker.webhooks)."""
    return (
        task is not None
        and not isinstance(task, JobTask)
        and getattr(task, "jobql_record", True) is not False
    )


@task_revoked.connect
def _on_revoked(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    if request is not None:
        events.revoked(
            request.id, getattr(sender, "name", ""), expired=expired, terminated=terminated
        )


@task_prerun.connect
def _on_prerun(
    sender: Any = None, task_id: str | None = None, kwargs: Any = None, **_: Any
) -> None:
    if _foreign(sender) and task_id:
        delivery = sender.request.delivery_info or {}
        try:
            outcome = events.started(
                task_id,
                sender.name,
                sender.request.retries or 0,
                dict(kwargs or {}),
                delivery.get("routing_key") or "",
                sender.request.hostname or "",
                owner_hint(sender.request),
                liveness.incarnation(),
            )
        except redis.RedisError:
            logger.exception("could not record the start of job %s", task_id)
            return
        if outcome == "ok":
            sender.request.jobql_started = True  # see tasks.worker.results


@task_success.connect
def _on_success(sender: Any = None, result: Any = None, **_: Any) -> None:
    if _foreign(sender) and not recorded(sender.request):
        events.succeeded(sender.request.id, sender.name, result)


@task_failure.connect
def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: BaseException | None = None, **_: Any
) -> None:
    if _foreign(sender) and not recorded(sender.request):
        events.failed(task_id, sender.name, exception)


@task_retry.connect
def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    if _foreign(sender) and request is not None:
        # Celery's Retry carries what the task retries after as ``exc``.
        why = getattr(reason, "exc", None) or reason
        why = why if isinstance(why, BaseException) else None
        events.retrying(request.id, sender.name, (request.retries or 0) + 1, why)


@task_postrun.connect
def _release_run_lease(task_id: str | None = None, **_: Any) -> None:
    """The run is over and its outcome (or retry) recorded: another delivery of the job may
    now run it, or find it finished (:mod:`tasks.core.run_lease`)."""
    if task_id and run_lease.holds(task_id):
        run_lease.release(events.client(), task_id)
