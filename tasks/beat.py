"""Celery beat for JobQL: RedBeat's Redis scheduler, every run recorded as an ordinary job.

``jobql beat`` runs ``celery -A tasks.app beat`` with :class:`JobQLScheduler`. RedBeat
(celery-redbeat, chosen over a scheduler of our own: maintained, Celery 5 compatible, JSON
only) reads the entries that are due from Redis on every tick, at most
``JOBQL_BEAT_INTERVAL`` apart, so a schedule the API creates, changes or disables takes
effect without a restart; and it holds a lock with a TTL (``JOBQL_BEAT_LOCK_TIMEOUT``), so
of two beat processes one runs the schedules and the other waits to take over.

A run of a JobQL schedule is written the way the API enqueues: a PENDING record owned by
the schedule's owner and carrying the schedule's id and name, its Celery message pushed in
the same Redis call when the broker is that Redis. Its idempotency key names the tick (the
schedule and the run it follows), so even two beats that both believed they held the lock
would start one job per tick. Entries JobQL did not write (``beat_schedule``) run as
RedBeat runs them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from celery.beat import SchedulingError
from celery.schedules import crontab
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat.schedulers import get_redis

from tasks import events, rabbitmq, records, redis_clients, slots
from tasks.fast_paths import writes_messages
from tasks.messages import OWNER_HEADER, queue_key, task_message
from tasks.schedules import (
    DISABLED_SCORE,
    SCHEDULE_SET,
    ZonedCrontab,
    celery_schedule,
    entry_key,
    is_ours,
    timing_from_json,
)
from tasks.settings import get_settings

logger = logging.getLogger(__name__)

# KEYS: the schedule's entry. ARGV: when, job id. Notes the last run on the entry unless
# the schedule was deleted meanwhile (a write would leave a stray hash behind).
LAST_RUN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_run_at', ARGV[1], 'last_job', ARGV[2])
end
"""


@dataclass(frozen=True, slots=True)
class Sent:
    """What beat logs of a run it started: the job's id."""

    id: str


class JobQLEntry(RedBeatSchedulerEntry):  # type: ignore[misc]
    """A RedBeat entry whose crontab is read in the schedule's own time zone."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        ours = is_ours(self.options)
        current: Any = getattr(self, "schedule", None)
        if ours and isinstance(current, crontab) and not isinstance(current, ZonedCrontab):
            timing = timing_from_json(ours["timing"])
            self.schedule = celery_schedule(timing, ours.get("timezone") or "UTC")


def tick_key(schedule_id: str, after: datetime | None) -> str:
    """The idempotency key of one tick: the schedule, and the run (or creation) it follows."""
    return f"schedule:{schedule_id}:{after.isoformat() if after else 'first'}"


class RunStarter:
    """Starts one run of a JobQL schedule as a job; any beat scheduler can use it (RedBeat's
    here; a Django project's ``django-celery-beat`` scheduler too).

    ``ours`` is JobQL's part of the schedule (``options["jobql"]`` of a RedBeat entry):
    ``owner``, ``name``, ``input`` (as clients read it), ``queue`` and ``priority``.
    """

    def __init__(self, app: Celery) -> None:
        settings = get_settings()
        # The broker is the records' Redis: a run's record and message go in one call.
        self._direct = writes_messages(app, settings)
        self._sender: Celery | None = None
        # The schedule's entry is RedBeat's, on JOBQL_REDIS_URL (never a cluster).
        self._last_run = redis_clients.worker_client().register_script(LAST_RUN_SCRIPT)

    def start(
        self,
        schedule_id: str,
        task: str,
        kwargs: dict[str, Any],
        ours: dict[str, Any],
        after: datetime | None,
    ) -> str:
        """Record and send the run of the tick after ``after``; returns its job's id (the
        existing one if this tick already ran)."""
        created = records.now()
        queue, priority = str(ours["queue"]), ours.get("priority")
        key = tick_key(schedule_id, after)
        owner = str(ours["owner"])
        fields = records.new_record(
            job_id=slots.new_id(records.idempotency_tag(owner, key)),
            task=task,
            owner=owner,
            queue=queue,
            input_json=ours["input"],
            created_at=created,
            idempotency=key,
            schedule=(schedule_id, str(ours["name"])),
        )
        job_id = fields["id"]
        message = None
        if self._direct:
            body = task_message(
                task=task,
                job_id=job_id,
                kwargs=kwargs,
                queue=queue,
                now=created,
                priority=priority,
                owner=fields["owner"],
            )
            message = (queue_key(queue, priority), body)
        existing = events.create(fields, idempotency=key, message=message)
        if existing is not None:
            logger.warning(
                "schedule %s: this tick already started job %s; not starting another",
                schedule_id,
                existing,
            )
            return existing
        if message is None:
            self._send_elsewhere(task, kwargs, fields, priority)
        self._last_run(keys=[entry_key(schedule_id)], args=[created.isoformat(), job_id])
        logger.info(
            "schedule %s (%s) started job %s",
            schedule_id,
            ours["name"],
            job_id,
            extra={"job_id": job_id, "task": task, "owner": fields["owner"]},
        )
        return job_id

    def _send_elsewhere(
        self, task: str, kwargs: dict[str, Any], fields: dict[str, str], priority: int | None
    ) -> None:
        """Another broker (RabbitMQ): the PENDING event, then Celery's producer, from an app
        without a result backend (a long-lived sender must not subscribe to every result:
        see tasks.app); as the API does (gql.jobs), an unsent run is ended and taken away."""
        if self._sender is None:
            from tasks.app import create_celery_app

            self._sender = create_celery_app(get_settings(), producer=True)
        events.announce(fields)
        try:
            self._sender.send_task(
                task,
                kwargs=kwargs,
                task_id=fields["id"],
                queue=fields["queue"],
                priority=rabbitmq.priority(get_settings().broker, priority),
                headers={OWNER_HEADER: fields["owner"]},
            )
        except Exception:
            try:
                events.announce(records.unsent(fields))
            except Exception:
                logger.exception("could not announce the end of unsent job %s", fields["id"])
            events.discard(fields)
            raise

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()


class JobQLScheduler(RedBeatScheduler):  # type: ignore[misc]
    Entry = JobQLEntry

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._runs = RunStarter(app)

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        ours = is_ours(entry.options)
        if ours is None:
            return super().apply_async(entry, producer, advance, **kwargs)
        after = entry.last_run_at
        entry = self.reserve(entry) if advance else entry
        try:
            job_id = self._runs.start(entry.name, entry.task, dict(entry.kwargs or {}), ours, after)
        except Exception as exc:
            raise SchedulingError(f"could not start a run of schedule {entry.name}") from exc
        try:
            self._follow_changes(entry.name, ours)
        except redis.RedisError:
            logger.warning("schedule %s: could not check it for changes after a run", entry.name)
        return Sent(job_id)

    def _follow_changes(self, schedule_id: str, ours: dict[str, Any]) -> None:
        """RedBeat rescored the entry from the definition it loaded when the tick began; if
        the API changed or deleted the schedule since, follow what is stored now (else a
        schedule sped up from hourly to every second would wait out the hour, and a deleted
        one would leave a hash of beat's ``meta`` behind)."""
        client = get_redis(self.app)
        key = entry_key(schedule_id)
        definition = client.hget(key, "definition")
        if definition is None:
            with client.pipeline() as pipe:
                pipe.delete(key)
                pipe.zrem(SCHEDULE_SET, key)
                pipe.execute()
            return
        fresh = self.Entry.from_key(key, app=self.app)
        now_ours = is_ours(fresh.options) or {}
        if now_ours.get("updated_at") != ours.get("updated_at"):
            score = fresh.score if fresh.enabled else DISABLED_SCORE
            client.zadd(SCHEDULE_SET, {key: score})

    def close(self) -> None:
        self._runs.close()
        super().close()
