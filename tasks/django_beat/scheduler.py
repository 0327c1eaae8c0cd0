"""Celery beat on django-celery-beat's models, every run of a JobQL schedule an ordinary job:
:class:`JobQLDatabaseScheduler` (the ``beat_scheduler`` with ``JOBQL_SCHEDULE_STORE=django``) is
django-celery-beat's ``DatabaseScheduler``, which reloads when a row changes (the API saves rows
as the admin does). A ``PeriodicTask`` with a JobQL :class:`.models.Schedule` runs through
:class:`tasks.worker.beat.RunStarter`, a PENDING job of the schedule's owner, one per tick (its
idempotency key names the tick); every other ``PeriodicTask`` runs as django-celery-beat runs it.

django-celery-beat takes no lock: two beats each sent every due entry (a plain ``PeriodicTask``
twice per tick, a JobQL schedule twice from its second tick on, each beat's tick key naming its
own last run). Here one beat of several runs the schedules, the one holding a lease in the
records' Redis (:class:`ScheduleLease`), as RedBeat's lock does in the Redis deployment; the
others stand by and the first to find it free takes over, reading the schedule afresh.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from celery.beat import SchedulingError
from django.db import DatabaseError, InterfaceError
from django.db.models import Q
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry

from tasks.core import redis_clients
from tasks.core.schedules import DJANGO_LOCK_KEY
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


# KEYS: the lease.  ARGV: this beat's token, the lease's length in ms.
# Takes the lease if free, or renews it if this beat's: returns 1; else the holder's token.
HOLD_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS: the lease.  ARGV: this beat's token.  Gives it up if this beat holds it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ScheduleLease:
    """Which beat of several runs the schedules: the one whose token is at ``key``.

    The holder renews it on every tick to expire ``timeout`` s later (beat ticks at least
    every ``JOBQL_BEAT_INTERVAL``, which the settings keep below it); a beat that dies, hangs
    or loses Redis stops renewing it, and a standby takes it within ``timeout`` s, at once
    if the holder gave it up on stopping. Both calls are safe to repeat (redis-py's retry).
    """

    def __init__(self, client: redis.Redis, key: str, timeout: float) -> None:
        self.key = key
        self.timeout_ms = int(timeout * 1000)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._hold = client.register_script(HOLD_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def hold(self) -> str | None:
        """Take or renew the lease: None once this beat holds it, else the holder's token.
        Raises ``redis.RedisError``."""
        reply = self._hold(keys=[self.key], args=[self.token, self.timeout_ms])
        return None if reply == 1 else str(reply)

    def release(self) -> None:
        self._release(keys=[self.key], args=[self.token])


class JobQLModelEntry(ModelEntry):  # type: ignore[misc]
    def save(self) -> None:
        """django-celery-beat saves every field of a row it read just before; this writes
        beat's two (see :func:`note_run`), so it cannot undo an edit made in between."""
        note_run(self.model.pk, self.model.last_run_at, self.model.total_run_count)


class JobQLDatabaseScheduler(DatabaseScheduler):  # type: ignore[misc]
    Entry = JobQLModelEntry
    # RedBeat's beat_init handler (connected once redbeat is imported, as tasks.worker.beat does)
    # takes a lock for any scheduler naming a key, blocking beat's start until it has it; this
    # scheduler holds a lease of its own instead (ScheduleLease), checked on every tick.
    lock_key = None

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._runs = RunStarter(app)
        self._lease_timeout = get_settings().beat_lock_timeout
        self._lease = ScheduleLease(
            redis_clients.worker_client(), DJANGO_LOCK_KEY, self._lease_timeout
        )
        self._holding = False
        self._said = ""  # what this beat last logged of the lease: each change once

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """django-celery-beat's tick, run only while this beat holds the lease: taken or
        renewed first, so every entry sent follows a renewal within the lease's length."""
        wait = float(self.max_interval)
        try:
            holder = self._lease.hold()
        except redis.RedisError as exc:
            # No beat can renew it while Redis is away (nor start a JobQL run): the one that
            # held it takes it back, or another does once it expired.
            self._holding = False
            self._say(
                logging.WARNING,
                f"beat: Redis is unreachable ({type(exc).__name__}); the schedules wait "
                "until this beat can renew or take their lock",
            )
            return min(1.0, wait)
        if holder is not None:
            lost = self._holding
            self._holding = False
            self._say(
                logging.WARNING if lost else logging.INFO,
                f"beat: {'lost' if lost else 'another beat holds'} the schedules' lock "
                f"({DJANGO_LOCK_KEY}, held by {holder}); standing by: this beat runs them once "
                f"it is free (JOBQL_BEAT_LOCK_TIMEOUT, {self._lease_timeout} s after its "
                "holder's last renewal)",
            )
            return wait
        if not self._holding:
            self._holding = True
            self._read_afresh()
            self._say(
                logging.INFO,
                f"beat: holding the schedules' lock ({DJANGO_LOCK_KEY}, {self._lease.token}): "
                "this beat runs them",
            )
        return float(super().tick(*args, **kwargs))

    def reserve(self, entry: Any) -> Any:
        """django-celery-beat's, which leaves the entry as it was before this run in the
        schedule: when a change to the schedule made Celery's tick rebuild its queue from
        those entries (every beat sees one at start-up, when another installs its default
        entries), the run just sent was found due again and sent a second time, within
        milliseconds (celery/django-celery-beat#558 describes such doubles). The schedule
        now holds the entry that knows of the run."""
        new_entry = super().reserve(entry)
        if self._schedule is not None and self._schedule.get(entry.name) is entry:
            self._schedule[entry.name] = new_entry
        return new_entry

    def _read_afresh(self) -> None:
        """Drop this beat's copy of the schedule: read before it took the lease, it misses
        the runs another beat made (and noted in the database) since."""
        self._initial_read = True  # django-celery-beat then reads every entry again
        self._heap = None  # and Celery's tick rebuilds its queue from them

    def _say(self, level: int, message: str) -> None:
        if message != self._said:
            logger.log(level, message)
            self._said = message

    def enabled_models_qs(self) -> Any:
        # JobQL's part of each row comes in the same query.
        return super().enabled_models_qs().select_related("jobql", "interval", "crontab")

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        ours: Schedule | None = getattr(entry.model, "jobql", None)
        if ours is None:
            sent = super().apply_async(entry, producer, advance, **kwargs)
            # Noted now, not at django-celery-beat's next sync (up to 3 minutes on): a beat
            # that takes over reads it, and does not run this tick again.
            self._note(entry.model)
            return sent
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

    @staticmethod
    def _note(model: PeriodicTask) -> None:
        try:
            note_run(model.pk, model.last_run_at, model.total_run_count)
        except (DatabaseError, InterfaceError):
            logger.warning("periodic task %s: could not record its run", model.name)

    def close(self) -> None:
        self._runs.close()
        super().close()  # writes what beat has not yet written of its runs: then the lease
        if self._holding:
            self._holding = False
            try:
                self._lease.release()
            except redis.RedisError:
                logger.warning("beat: could not give up the schedules' lock; it expires")
