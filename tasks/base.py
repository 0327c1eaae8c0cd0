"""The base class of every task in JobQL's Celery app, typed or written the usual Celery way."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, states
from celery.exceptions import Ignore

from tasks import events
from tasks.records import TERMINAL_STATES, JobState

logger = logging.getLogger(__name__)


class JobTask(Task):  # type: ignore[misc]
    """Reports the start of each run and every ``update_state`` as job events."""

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Celery's own hook, run inside the tracer, so raising Ignore here skips the body:
        # a job cancelled while it waited never runs, whichever worker holds it, and a
        # redelivered message of a finished job does not run it twice.
        fields = {"retries": str(self.request.retries or 0)}
        try:
            outcome = events.transition(task_id, JobState.STARTED, fields)
            if outcome == "missing":
                events.adopt(self, task_id, kwargs)
                outcome = events.transition(task_id, JobState.STARTED, fields)
        except redis.RedisError:
            logger.exception("could not record the start of job %s", task_id)
            return
        if outcome in TERMINAL_STATES:
            logger.info("job %s is already %s; not running it again", task_id, outcome)
            raise Ignore()

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Celery's ``self.update_state(state="PROGRESS", meta=...)``, broadcast as progress."""
        job_id = task_id or self.request.id
        if job_id and state not in states.ALL_STATES:
            try:
                events.transition(job_id, JobState.PROGRESS, events.progress_fields(meta))
            except redis.RedisError:
                logger.exception("could not record progress of job %s", job_id)
        super().update_state(task_id=job_id, state=state, meta=meta, **kwargs)
