"""The GraphQL types of periodic schedules: ``Schedule`` and the inputs that make one."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from gql.services.schedules import ScheduleRequest, TimingRequest
from tasks.core.records import now
from tasks.core.schedules import Crontab, Interval, ScheduleRecord


@strawberry.type(name="Crontab", description="Cron fields, as Celery's crontab reads them.")
class CrontabType:
    minute: str = strawberry.field(description='Minutes of the hour, e.g. "*/15" or "0,30".')
    hour: str = strawberry.field(description='Hours of the day, 0-23, e.g. "3" or "9-17".')
    day_of_week: str = strawberry.field(
        description='Days of the week, 0 (Sunday) to 6 or names, e.g. "mon-fri".'
    )
    day_of_month: str = strawberry.field(description='Days of the month, 1-31, e.g. "1,15".')
    month_of_year: str = strawberry.field(description='Months, 1-12, e.g. "*/3".')


@strawberry.type(description="A periodic schedule: beat starts its task as a new job at each tick.")
class Schedule:
    id: strawberry.ID = strawberry.field(description="The schedule's id.")
    name: str = strawberry.field(description="Its name, unique among your schedules.")
    task: str = strawberry.field(description="The task each run starts.")
    input: JSON = strawberry.field(description="The validated input of every run, camelCase.")
    interval: float | None = strawberry.field(
        description="Seconds between runs, when it runs on an interval."
    )
    crontab: CrontabType | None = strawberry.field(
        description="When it runs, when it runs on a crontab."
    )
    timezone: str = strawberry.field(description="The IANA time zone its crontab is read in.")
    enabled: bool = strawberry.field(description="Whether beat runs it.")
    queue: str = strawberry.field(description="The queue its runs are sent to.")
    priority: int | None = strawberry.field(description="Its runs' priority, 0 (first) to 9.")
    runs: int = strawberry.field(description="How many times beat started it.")
    last_run_at: datetime | None = strawberry.field(description="When beat last started it.")
    last_job_id: strawberry.ID | None = strawberry.field(
        description="The job its last run started (`job(id)`)."
    )
    next_run_at: datetime | None = strawberry.field(
        description="When beat will start it next (now if overdue); null while disabled."
    )
    created_at: datetime = strawberry.field(description="When it was created (UTC).")
    updated_at: datetime = strawberry.field(description="When it was last changed (UTC).")

    @classmethod
    def from_record(cls, record: ScheduleRecord) -> Schedule:
        timing = record.timing
        return cls(
            id=strawberry.ID(record.id),
            name=record.name,
            task=record.task,
            input=JSON(record.input),
            interval=timing.seconds if isinstance(timing, Interval) else None,
            crontab=CrontabType(
                minute=timing.minute,
                hour=timing.hour,
                day_of_week=timing.day_of_week,
                day_of_month=timing.day_of_month,
                month_of_year=timing.month_of_year,
            )
            if isinstance(timing, Crontab)
            else None,
            timezone=record.timezone,
            enabled=record.enabled,
            queue=record.queue,
            priority=record.priority,
            runs=record.runs,
            last_run_at=record.last_run_at,
            last_job_id=strawberry.ID(record.last_job_id) if record.last_job_id else None,
            next_run_at=record.next_run_at(now()),
            created_at=record.created_at,
            updated_at=record.updated_at,
        )


@strawberry.input(description='Cron fields; each defaults to "*" (every).')
class CrontabInput:
    minute: str = strawberry.field(default="*", description='Minutes, 0-59, e.g. "*/15".')
    hour: str = strawberry.field(default="*", description='Hours, 0-23, e.g. "3".')
    day_of_week: str = strawberry.field(
        default="*", description='Days of the week, 0 (Sunday) to 6 or names, e.g. "mon-fri".'
    )
    day_of_month: str = strawberry.field(default="*", description="Days of the month, 1-31.")
    month_of_year: str = strawberry.field(default="*", description="Months, 1-12.")


@strawberry.input(description="When a schedule runs: exactly one of interval and crontab.")
class ScheduleTiming:
    interval: float | None = strawberry.field(
        default=None, description="Seconds between runs (at least 1)."
    )
    crontab: CrontabInput | None = strawberry.field(
        default=None, description="Cron fields, read in `timezone`."
    )
    timezone: str = strawberry.field(
        default="UTC", description='An IANA time zone, e.g. "Europe/Paris".'
    )

    def request(self) -> TimingRequest:
        cron = self.crontab
        return TimingRequest(
            interval=self.interval,
            crontab=Crontab(
                minute=cron.minute,
                hour=cron.hour,
                day_of_week=cron.day_of_week,
                day_of_month=cron.day_of_month,
                month_of_year=cron.month_of_year,
            )
            if cron is not None
            else None,
            timezone=self.timezone,
        )


@strawberry.input(description="Where each run of a schedule goes.")
class ScheduleOptions:
    queue: str | None = strawberry.field(default=None, description="Queue to send runs to.")
    priority: int | None = strawberry.field(default=None, description="0 (first) to 9.")


def schedule_request(
    *,
    name: str | None = None,
    task: str | None = None,
    input: JSON | None = None,
    timing: ScheduleTiming | None = None,
    options: ScheduleOptions | None = None,
    enabled: bool | None = None,
) -> ScheduleRequest:
    return ScheduleRequest(
        name=name,
        task=task,
        input=input,
        timing=timing.request() if timing else None,
        queue=options.queue if options else None,
        priority=options.priority if options else None,
        enabled=enabled,
    )
