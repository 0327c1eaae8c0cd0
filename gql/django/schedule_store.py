"""Schedules kept in django-celery-beat's models, so a Django project's own beat runs them and
its admin shows them: :class:`DjangoScheduleStore` (``JOBQL_SCHEDULE_STORE=django``) keeps each
as a ``PeriodicTask`` plus a :class:`tasks.django_beat.models.Schedule` row for JobQL's fields,
and reads the last run and run count back from beat's rows. Queries run in Django's thread for
sync code, never on the loop; rows are locked while a change is applied, so beat's record of a
run and an edit never overwrite each other.
"""

from __future__ import annotations

import builtins
import json
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

from asgiref.sync import sync_to_async
from django.db import IntegrityError, close_old_connections, transaction
from django.db.utils import InterfaceError, OperationalError
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from gql.services.errors import ServiceUnavailable
from gql.services.schedule_store import Change, NameTaken, TooManySchedules
from tasks.core.records import dumps
from tasks.core.schedules import Crontab, Interval, ScheduleRecord, Timing
from tasks.django_beat.models import Schedule, ScheduleOwner

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_MAX_INT = 2**31 - 1  # IntervalSchedule.every is a 32-bit integer


def task_name(owner: str, name: str, schedule_id: str) -> str:
    """The ``PeriodicTask``'s name, unique as its column requires: ``owner/name`` as the
    admin shows it (an owner has each name once, and holds no slash), else JobQL's id."""
    readable = f"{owner}/{name}"
    if "/" in owner or len(readable) > 200:
        return f"jobql:{schedule_id}"
    return readable


def interval_row(seconds: float) -> IntervalSchedule:
    """The ``IntervalSchedule`` of ``seconds``: whole seconds, else microseconds while they
    fit its integer (a fraction beyond 35 minutes is rounded to the second)."""
    micro = round(seconds * 1_000_000)
    if micro % 1_000_000 == 0 or micro > _MAX_INT:
        every, period = round(seconds), IntervalSchedule.SECONDS
    else:
        every, period = micro, IntervalSchedule.MICROSECONDS
    row = IntervalSchedule.objects.filter(every=every, period=period).first()
    return row or IntervalSchedule.objects.create(every=every, period=period)


def crontab_row(cron: Crontab, zone: str) -> CrontabSchedule:
    fields = {
        "minute": cron.minute,
        "hour": cron.hour,
        "day_of_week": cron.day_of_week,
        "day_of_month": cron.day_of_month,
        "month_of_year": cron.month_of_year,
        "timezone": ZoneInfo(zone),
    }
    row = CrontabSchedule.objects.filter(**fields).first()
    return row or CrontabSchedule.objects.create(**fields)


def timing_of(task: PeriodicTask) -> Timing | None:
    """The interval or crontab beat runs; None for a solar or clocked schedule (set in the
    admin), which JobQL does not show."""
    if task.crontab_id is not None:
        c = task.crontab
        return Crontab(
            minute=c.minute,
            hour=c.hour,
            day_of_week=c.day_of_week,
            day_of_month=c.day_of_month,
            month_of_year=c.month_of_year,
        )
    if task.interval_id is None:
        return None
    every = timedelta(**{task.interval.period: task.interval.every})
    return Interval(seconds=every.total_seconds())


def record_of(row: Schedule, default_queue: str) -> ScheduleRecord | None:
    """The schedule as the API shows it, read from beat's rows and JobQL's; None (and a
    warning) for one re-timed in the admin to a timing JobQL cannot show."""
    task: PeriodicTask = row.periodic_task
    timing = timing_of(task)
    if timing is None:
        logger.warning(
            "schedule %s: its PeriodicTask %s is neither an interval nor a crontab", row.id, task.pk
        )
        return None
    return ScheduleRecord(
        id=str(row.id),
        owner=row.owner,
        name=row.name,
        task=task.task,
        input=row.input,
        kwargs=json.loads(task.kwargs or "{}"),
        timing=timing,
        timezone=str(task.crontab.timezone) if task.crontab_id is not None else row.timezone,
        enabled=task.enabled,
        queue=task.queue or default_queue,
        priority=task.priority,
        created_at=row.created_at,
        updated_at=row.updated_at,
        # Where django-celery-beat's entry counts from (ModelEntry): the last run, else the
        # last change of the row.
        since=task.last_run_at or task.date_changed,
        runs=task.total_run_count,
        last_run_at=row.last_run_at,
        last_job_id=row.last_job_id,
    )


def _write_task(task: PeriodicTask, record: ScheduleRecord) -> None:
    """``record``'s part of the ``PeriodicTask``; saving it tells beat to reload."""
    if isinstance(record.timing, Interval):
        task.interval, task.crontab = interval_row(record.timing.seconds), None
    else:
        task.interval, task.crontab = None, crontab_row(record.timing, record.timezone)
    task.name = task_name(record.owner, record.name, record.id)
    task.task = record.task
    task.kwargs = dumps(record.kwargs)
    task.queue = record.queue
    task.priority = record.priority
    task.enabled = record.enabled
    # Beat counts the next run from here; saving a disabled task clears it.
    task.last_run_at = record.since
    task.description = f"JobQL schedule {record.name!r} of {record.owner}"
    task.save()


def _rows() -> Any:
    return Schedule.objects.select_related(
        "periodic_task", "periodic_task__interval", "periodic_task__crontab"
    )


def _lock_owner(owner: str) -> None:
    ScheduleOwner.objects.get_or_create(owner=owner)
    ScheduleOwner.objects.select_for_update().get(owner=owner)


def _parse(schedule_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(schedule_id)
    except ValueError:
        return None


class DjangoScheduleStore:
    """JobQL's schedules in django-celery-beat's tables (see the module's docstring)."""

    def __init__(self, default_queue: str) -> None:
        self.default_queue = default_queue  # where a row that names no queue sends its runs

    async def list(self, owner: str | None) -> list[ScheduleRecord]:
        return await _off_loop(self._list, owner)

    async def get(self, schedule_id: str) -> ScheduleRecord | None:
        return await _off_loop(self._get, schedule_id)

    async def create(self, record: ScheduleRecord, *, limit: int) -> None:
        await _off_loop(self._create, record, limit)

    async def update(self, schedule_id: str, change: Change) -> ScheduleRecord | None:
        return await _off_loop(self._update, schedule_id, change)

    async def delete(self, schedule_id: str) -> bool:
        return await _off_loop(self._delete, schedule_id)

    def _list(self, owner: str | None) -> builtins.list[ScheduleRecord]:
        rows = _rows() if owner is None else _rows().filter(owner=owner)
        found = [record_of(row, self.default_queue) for row in rows]
        return sorted((r for r in found if r is not None), key=lambda r: (r.name, r.owner, r.id))

    def _get(self, schedule_id: str) -> ScheduleRecord | None:
        key = _parse(schedule_id)
        row = None if key is None else _rows().filter(pk=key).first()
        return None if row is None else record_of(row, self.default_queue)

    @staticmethod
    def _create(record: ScheduleRecord, limit: int) -> None:
        with transaction.atomic():
            _lock_owner(record.owner)
            mine = Schedule.objects.filter(owner=record.owner)
            if mine.filter(name=record.name).exists():
                raise NameTaken(record.name)
            if mine.count() >= limit:
                raise TooManySchedules(record.owner)
            task = PeriodicTask()
            try:
                with transaction.atomic():
                    _write_task(task, record)
            except IntegrityError:  # a PeriodicTask of that name made outside JobQL
                raise NameTaken(record.name) from None
            Schedule.objects.create(
                id=uuid.UUID(record.id),
                periodic_task=task,
                owner=record.owner,
                name=record.name,
                input=record.input,
                timezone=record.timezone,
                created_at=record.created_at,
                updated_at=record.updated_at,
            )

    def _update(self, schedule_id: str, change: Change) -> ScheduleRecord | None:
        key = _parse(schedule_id)
        if key is None:
            return None
        with transaction.atomic():
            owner = Schedule.objects.filter(pk=key).values_list("owner", flat=True).first()
            if owner is None:
                return None
            _lock_owner(owner)  # a rename checks the owner's names
            # Beat's record of a run waits for this (the crontab or interval may be absent:
            # only the two rows that change are locked).
            locked = _rows().select_for_update(of=("self", "periodic_task"))
            row = locked.filter(pk=key).first()
            if row is None:
                return None
            current = record_of(row, self.default_queue)
            if current is None:
                return None
            changed = change(current)
            mine = Schedule.objects.filter(owner=owner)
            if changed.name != current.name and mine.filter(name=changed.name).exists():
                raise NameTaken(changed.name)
            try:
                with transaction.atomic():
                    _write_task(row.periodic_task, changed)
            except IntegrityError:
                raise NameTaken(changed.name) from None
            row.name = changed.name
            row.input = changed.input
            row.timezone = changed.timezone
            row.updated_at = changed.updated_at
            row.save(update_fields=["name", "input", "timezone", "updated_at"])
            return record_of(_rows().get(pk=key), self.default_queue)

    @staticmethod
    def _delete(schedule_id: str) -> bool:
        key = _parse(schedule_id)
        if key is None:
            return False
        with transaction.atomic():
            row = Schedule.objects.select_for_update().filter(pk=key).first()
            if row is None:
                return False
            # Deleting the PeriodicTask (its row cascades to ours) tells beat to reload.
            PeriodicTask.objects.get(pk=row.periodic_task_id).delete()
            return True


async def _off_loop(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``function`` in Django's thread for sync code, as a Django request would run it."""

    def call() -> R:
        close_old_connections()
        try:
            return function(*args, **kwargs)
        except (OperationalError, InterfaceError) as exc:
            raise ServiceUnavailable("the database is unavailable") from exc

    result: R = await sync_to_async(call)()
    return result
