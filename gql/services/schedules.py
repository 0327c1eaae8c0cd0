"""What the API does with periodic schedules: validate, keep owners apart, store. A schedule's
input is validated by its task's own model, and its queue and priority as an enqueue's options
are, so every run beat starts is one the API would have accepted; another owner's schedule
answers exactly as an unknown id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import ParseException, crontab
from pydantic import ValidationError

from gql.services.errors import BadUserInput, NotFound
from gql.services.jobs import EnqueueRequest, JobService
from gql.services.schedule_store import NameTaken, ScheduleStore, TooManySchedules
from tasks.core import records
from tasks.core.records import dumps
from tasks.core.schedules import Crontab, Interval, ScheduleRecord, Timing

MIN_INTERVAL = 1.0
MAX_INTERVAL = 366 * 24 * 3600.0
MAX_NAME = 100
CRON_FIELDS = {  # Celery's crontab argument -> the GraphQL field
    "minute": "minute",
    "hour": "hour",
    "day_of_week": "dayOfWeek",
    "day_of_month": "dayOfMonth",
    "month_of_year": "monthOfYear",
}


@dataclass(frozen=True, slots=True)
class TimingRequest:
    """``ScheduleTiming`` as the service reads it: exactly one of interval and crontab."""

    interval: float | None = None
    crontab: Crontab | None = None
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """What a create or an update asks for; None leaves a field as it is (on update)."""

    name: str | None = None
    task: str | None = None
    input: Any = None
    timing: TimingRequest | None = None
    queue: str | None = None
    priority: int | None = None
    enabled: bool | None = None


class ScheduleService:
    def __init__(self, jobs: JobService, store: ScheduleStore) -> None:
        self.jobs = jobs
        self.store = store

    # ``scope`` is whose schedules the caller may see: its own, or None for an admin (all).

    async def list(self, scope: str | None) -> list[ScheduleRecord]:
        return await self.store.list(scope)

    async def get(self, schedule_id: str, scope: str | None) -> ScheduleRecord | None:
        found = await self.store.get(schedule_id)
        if found is None or (scope is not None and found.owner != scope):
            return None
        return found

    async def require(self, schedule_id: str, scope: str | None) -> ScheduleRecord:
        found = await self.get(schedule_id, scope)
        if found is None:
            raise NotFound(f"no schedule {schedule_id!r}")
        return found

    async def create(self, request: ScheduleRequest, owner: str) -> ScheduleRecord:
        assert request.timing is not None and request.task is not None
        name = _name(request.name or "")
        timing, zone = _timing(request.timing)
        spec = self.jobs.spec(request.task)
        kwargs, shown = self._input(spec.name, request.input)
        queue, priority = self._delivery(spec.name, request.queue, request.priority)
        now = records.now()
        record = ScheduleRecord(
            id=str(uuid.uuid4()),
            owner=owner,
            name=name,
            task=spec.name,
            input=shown,
            kwargs=kwargs,
            timing=timing,
            timezone=zone,
            enabled=True if request.enabled is None else request.enabled,
            queue=queue,
            priority=priority,
            created_at=now,
            updated_at=now,
            since=now,
        )
        limit = self.jobs.limit_settings.max_schedules_per_owner
        try:
            await self.store.create(record, limit=limit)
        except NameTaken:
            raise BadUserInput.field(
                "name", f"you already have a schedule named {name!r}"
            ) from None
        except TooManySchedules:
            raise BadUserInput.field(
                "name", f"you have {limit} schedules, the most allowed; delete one first"
            ) from None
        return record

    async def update(
        self, schedule_id: str, request: ScheduleRequest, scope: str | None
    ) -> ScheduleRecord:
        """Change what ``request`` gives; every field is checked before anything is stored."""
        current = await self.require(schedule_id, scope)
        changes: dict[str, Any] = {}
        if request.name is not None:
            changes["name"] = _name(request.name)
        if request.timing is not None:
            changes["timing"], changes["timezone"] = _timing(request.timing)
        if request.task is not None or request.input is not None:
            task = self.jobs.spec(request.task).name if request.task else current.task
            given = request.input if request.input is not None else current.input
            changes["task"] = task
            changes["kwargs"], changes["input"] = self._input(task, given)
        if request.queue is not None or request.priority is not None or "task" in changes:
            queue = request.queue or current.queue
            priority = request.priority if request.priority is not None else current.priority
            changes["queue"], changes["priority"] = self._delivery(
                changes.get("task", current.task), queue, priority
            )
        if request.enabled is not None:
            changes["enabled"] = request.enabled
        now = records.now()
        try:
            updated = await self.store.update(
                schedule_id, lambda stored: stored.changed(now, **changes)
            )
        except NameTaken:
            name = changes["name"]
            raise BadUserInput.field(
                "name", f"you already have a schedule named {name!r}"
            ) from None
        if updated is None:
            raise NotFound(f"no schedule {schedule_id!r}")
        return updated

    async def delete(self, schedule_id: str, scope: str | None) -> ScheduleRecord:
        current = await self.require(schedule_id, scope)
        if not await self.store.delete(schedule_id):
            raise NotFound(f"no schedule {schedule_id!r}")
        return current

    def _input(self, task: str, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The task's kwargs and the input as clients read it, validated by its model."""
        spec = self.jobs.spec(task)
        if not isinstance(data, dict):
            raise BadUserInput.field("input", "must be a JSON object")
        try:
            kwargs, shown = spec.prepare(data)
        except ValidationError as exc:
            raise BadUserInput.from_validation(exc, "input") from None
        limit = self.jobs.limit_settings.max_input_bytes
        if len(dumps(shown)) > limit:
            raise BadUserInput.field("input", f"longer than {limit} characters of JSON")
        return kwargs, shown

    def _delivery(
        self, task: str, queue: str | None, priority: int | None
    ) -> tuple[str, int | None]:
        """The queue and priority, checked as an enqueue's options are."""
        spec = self.jobs.spec(task)
        delivery = self.jobs.planner.delivery(spec, EnqueueRequest(queue=queue, priority=priority))
        return delivery.queue, delivery.priority


def _name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise BadUserInput.field("name", f"give 1 to {MAX_NAME} printable characters")
    return name


def _timing(request: TimingRequest) -> tuple[Timing, str]:
    """Exactly one of an interval and a crontab, whose every field Celery can read, and a
    time zone from the IANA database."""
    if (request.interval is None) == (request.crontab is None):
        raise BadUserInput.field("timing", "give exactly one of interval and crontab")
    try:
        ZoneInfo(request.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadUserInput.field(
            "timing.timezone", f"unknown time zone {request.timezone!r}; use an IANA name"
        ) from None
    if request.interval is not None:
        if not MIN_INTERVAL <= request.interval <= MAX_INTERVAL:
            raise BadUserInput.field(
                "timing.interval", f"must be {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds"
            )
        return Interval(seconds=float(request.interval)), request.timezone
    cron = request.crontab
    assert cron is not None
    errors = []
    for field, label in CRON_FIELDS.items():
        try:
            crontab(**{field: getattr(cron, field)})
        except (ValueError, TypeError, ParseException) as exc:
            errors.append({"path": f"timing.crontab.{label}", "message": str(exc) or "invalid"})
    if not errors:
        try:
            crontab(day_of_month=cron.day_of_month, month_of_year=cron.month_of_year)
        except ValueError as exc:
            errors.append({"path": "timing.crontab.dayOfMonth", "message": str(exc)})
    if errors:
        summary = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
        raise BadUserInput(f"Invalid input: {summary}", errors)
    return cron, request.timezone
