"""A periodic schedule as JobQL keeps it: a RedBeat entry in Redis, written in the format RedBeat
documents, so RedBeat (:mod:`tasks.worker.beat`) runs what the API writes with no restart.
JobQL's part of an entry (owner, name, the input as clients read it, time zone, queue) sits under
``options["jobql"]``, and every key (:data:`BEAT_PREFIX`, :data:`SCHEDULE_SET`, :data:`LOCK_KEY`,
:func:`names_key`) is in the one hash slot ``{beat}``, so a Redis Cluster can run a script over
them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab, schedule
from redbeat.decoder import RedBeatJSONDecoder, RedBeatJSONEncoder

from tasks.core.records import PREFIX

BEAT_PREFIX = f"{PREFIX}:{{beat}}:"  # RedBeat's ``redbeat_key_prefix``
SCHEDULE_SET = BEAT_PREFIX + ":schedule"  # RedBeat's sorted set (prefix + ":schedule")
LOCK_KEY = BEAT_PREFIX + ":lock"
# With JOBQL_SCHEDULE_STORE=django: the lease of the Django beat that runs the schedules
# (tasks.django_beat.scheduler); its value names the holder (host:pid:token).
DJANGO_LOCK_KEY = BEAT_PREFIX + ":django-lock"
DISABLED_SCORE = -1  # RedBeat reads scores from 0 up: a disabled entry is never loaded
# An entry's fields: RedBeat's two, then JobQL's record of the last run (beat writes them).
FIELDS = ["definition", "meta", "last_run_at", "last_job"]


def entry_key(schedule_id: str) -> str:
    return BEAT_PREFIX + schedule_id


def names_key(owner: str) -> str:
    return f"{BEAT_PREFIX}owner:{owner}"


@dataclass(frozen=True, slots=True)
class Interval:
    """Every ``seconds``, counted from the previous run (or the schedule's creation)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Crontab:
    """Cron fields as Celery's ``crontab`` reads them, in the schedule's time zone."""

    minute: str = "*"
    hour: str = "*"
    day_of_week: str = "*"
    day_of_month: str = "*"
    month_of_year: str = "*"


Timing = Interval | Crontab


class ZonedCrontab(crontab):  # type: ignore[misc]
    """Celery's crontab read in its own time zone rather than the app's (``0 3 * * *`` in
    Europe/Paris is 3 am there, summer and winter): Celery 5.7 normalizes both the last
    run and now into ``tz`` before matching the fields."""

    def __init__(self, zone: tzinfo, **fields: Any) -> None:
        super().__init__(**fields)
        self.zone = zone

    @property
    def tz(self) -> tzinfo:
        return self.zone


def celery_schedule(timing: Timing, zone: str, now: datetime | None = None) -> Any:
    """The Celery schedule beat evaluates; ``now`` pins its clock (for a forecast)."""
    nowfun = (lambda: now) if now is not None else None
    if isinstance(timing, Interval):
        return schedule(run_every=timedelta(seconds=timing.seconds), nowfun=nowfun)
    return ZonedCrontab(
        ZoneInfo(zone),
        minute=timing.minute,
        hour=timing.hour,
        day_of_week=timing.day_of_week,
        day_of_month=timing.day_of_month,
        month_of_year=timing.month_of_year,
        nowfun=nowfun,
    )


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """One schedule. ``since`` is when it last ran, or was created, re-timed or enabled if
    it has not run since: the next run is the first tick of ``timing`` after it."""

    id: str
    owner: str
    name: str
    task: str
    input: dict[str, Any]  # as clients read it (camelCase)
    kwargs: dict[str, Any]  # as the task receives it
    timing: Timing
    timezone: str
    enabled: bool
    queue: str
    priority: int | None
    created_at: datetime
    updated_at: datetime
    since: datetime
    runs: int = 0
    last_run_at: datetime | None = None  # JobQL's own fields of the entry, written by beat
    last_job_id: str | None = None

    def next_run_at(self, now: datetime) -> datetime | None:
        """When beat will next start it (``now`` if overdue); None while disabled."""
        if not self.enabled:
            return None
        if isinstance(self.timing, Interval):
            return max(now, self.since + timedelta(seconds=self.timing.seconds))
        forecast = celery_schedule(self.timing, self.timezone, now)
        remaining: timedelta = forecast.remaining_estimate(self.since)
        return max(now, now + remaining)

    def score(self, now: datetime) -> float:
        """Its score in RedBeat's sorted set: the next run in Unix seconds, -1 if disabled."""
        moment = self.next_run_at(now)
        return DISABLED_SCORE if moment is None else moment.timestamp()

    def changed(self, now: datetime, **changes: Any) -> ScheduleRecord:
        """A copy with ``changes``. A new timing, or enabling it again, counts from ``now``
        as if just created: missed ticks are not caught up."""
        changed = replace(self, **changes, updated_at=now)
        retimed = changed.timing != self.timing or changed.timezone != self.timezone
        if retimed or (changed.enabled and not self.enabled):
            changed = replace(changed, since=now)
        return changed

    def definition(self) -> str:
        """The entry's ``definition`` as RedBeat documents it, encoded by RedBeat."""
        value = {
            "name": self.id,
            "task": self.task,
            "schedule": celery_schedule(self.timing, self.timezone),
            "args": [],
            "kwargs": self.kwargs,
            "enabled": self.enabled,
            "options": {
                "jobql": {
                    "owner": self.owner,
                    "name": self.name,
                    "input": self.input,
                    "timing": timing_json(self.timing),
                    "timezone": self.timezone,
                    "queue": self.queue,
                    "priority": self.priority,
                    "created_at": self.created_at.isoformat(),
                    "updated_at": self.updated_at.isoformat(),
                }
            },
        }
        return json.dumps(value, cls=RedBeatJSONEncoder)

    def meta(self) -> str:
        """The entry's ``meta``, as beat itself writes it after each run."""
        value = {"last_run_at": self.since, "total_run_count": self.runs}
        return json.dumps(value, cls=RedBeatJSONEncoder)

    @classmethod
    def decode(cls, row: Sequence[Any]) -> ScheduleRecord | None:
        """An entry's :data:`FIELDS` as read; None when it is gone or JobQL did not write
        it (an entry of Celery's ``beat_schedule``)."""
        definition, meta, last_run, last_job = row
        if not definition:
            return None
        value = json.loads(definition, cls=RedBeatJSONDecoder)
        ours = is_ours(value.get("options"))
        if ours is None:
            return None
        state = json.loads(meta, cls=RedBeatJSONDecoder) if meta else {}
        created = datetime.fromisoformat(ours["created_at"])
        return cls(
            id=value["name"],
            owner=ours["owner"],
            name=ours["name"],
            task=value["task"],
            input=ours["input"],
            kwargs=value.get("kwargs") or {},
            timing=timing_from_json(ours["timing"]),
            timezone=ours.get("timezone") or "UTC",
            enabled=bool(value.get("enabled", True)),
            queue=ours["queue"],
            priority=ours.get("priority"),
            created_at=created,
            updated_at=datetime.fromisoformat(ours.get("updated_at") or ours["created_at"]),
            since=_aware(state.get("last_run_at")) or created,
            runs=int(state.get("total_run_count") or 0),
            last_run_at=datetime.fromisoformat(last_run) if last_run else None,
            last_job_id=last_job or None,
        )


def timing_json(timing: Timing) -> dict[str, Any]:
    """The timing as JobQL keeps it beside RedBeat's schedule (the same, in plain JSON)."""
    if isinstance(timing, Interval):
        return {"interval": timing.seconds}
    return {
        "crontab": {
            "minute": timing.minute,
            "hour": timing.hour,
            "day_of_week": timing.day_of_week,
            "day_of_month": timing.day_of_month,
            "month_of_year": timing.month_of_year,
        }
    }


def timing_from_json(value: dict[str, Any]) -> Timing:
    if "interval" in value:
        return Interval(seconds=float(value["interval"]))
    return Crontab(**value["crontab"])


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_ours(options: dict[str, Any] | None) -> dict[str, Any] | None:
    """JobQL's part of an entry's options, or None for an entry JobQL did not write."""
    ours = (options or {}).get("jobql")
    return ours if isinstance(ours, dict) and "owner" in ours else None
