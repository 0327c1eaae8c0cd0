"""Celery beat on django-celery-beat's models, every run of a JobQL schedule an ordinary job:
:class:`JobQLDatabaseScheduler` (the ``beat_scheduler`` with ``JOBQL_SCHEDULE_STORE=django``) is
django-celery-beat's ``DatabaseScheduler``, which reloads when a row changes (the API saves rows
as the admin does). A ``PeriodicTask`` with a JobQL :class:`.models.Schedule` runs through
:class:`tasks.worker.beat.RunStarter`, a PENDING job of the schedule's owner, one per tick (its
idempotency key names the tick); every other ``PeriodicTask`` runs as django-celery-beat runs it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from celery import Celery
from celery.beat import SchedulingError
from django.db import DatabaseError, InterfaceError
from django.db.models import Q
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from tasks.core.settings import get_settings
from tasks.django_beat.models import Schedule
from tasks.worker.beat import RunStarter, Sent

logger = logging.getLogger(__name__)


def note_run(task_id: int, last_run_at: datetime, total_run_count: int) -> None:
    """Beat's record of a run, on the fields beat owns only and only forward in time: an
    edit saved meanwhile (re-timed, disabled) is never overwritten by a stale copy."""
    PeriodicTask.objects.filter(
        Q(last_run_at__isnull=True) | Q(last_run_at__lt=last_run_at), pk=task_id, enabled=True
    ).update(last_run_at=last_run_at, total_run_count=total_run_count)


class JobQLModelEntry(ModelEntry):  # type: ignore[misc]
    def save(self) -> None:
        """django-celery-beat saves every field of a row it read just before; this writes
        beat's two (see :func:`note_run`), so it cannot undo an edit made in between."""
        note_run(self.model.pk, self.model.last_run_at, self.model.total_run_count)


class JobQLDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]
    Entry = JobQLModelEntry
    # RedBeat's beat_init handler (connected once redbeat is imported, as tasks.worker.beat does)
    # takes a lock for any scheduler naming a key; django-celery-beat's runs unlocked.
    lock_key = None

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._runs = RunStarter(app)

    def enabled_models_qs(self) -> Any:
        # JobQL's part of each row comes in the same query.
        return super().enabled_models_qs().select_related("jobql", "interval", "crontab")

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        ours: Schedule | None = getattr(entry.model, "jobql", None)
        if ours is None:
            return super().apply_async(entry, producer, advance, **kwargs)
        after = entry.last_run_at  # the run (or change) this tick follows
        entry = self.reserve(entry) if advance else entry
        model = entry.model  # beat's reserve() already counted this run on it
        fields = {
            "owner": ours.owner,
            "name": ours.name,
            "input": ours.input,
            "queue": model.queue or get_settings().default_queue,
            "priority": model.priority,
        }
        try:
            job_id = self._runs.start(str(ours.id), model.task, entry.kwargs, fields, after)
        except Exception as exc:
            raise SchedulingError(f"could not start a run of schedule {ours.id}") from exc
        try:
            note_run(model.pk, model.last_run_at, model.total_run_count)
            Schedule.objects.filter(pk=ours.pk).update(
                last_run_at=model.last_run_at, last_job_id=job_id
            )
        except (DatabaseError, InterfaceError):
            logger.warning("schedule %s: could not record its run of job %s", ours.id, job_id)
        return Sent(job_id)

    def close(self) -> None:
        self._runs.close()
        super().close()
