"""Celery beat on RedBeat's Redis scheduler (``jobql beat`` runs :class:`JobQLScheduler`), which
reads the due entries on every tick, so the API's changes apply without a restart, and holds a
lock, so one beat of several runs them. A run is written as the API enqueues, a PENDING job of
the schedule's owner under an idempotency key naming the tick, so even two beats start one job
per tick; a Redis outage of up to ``JOBQL_REDIS_OUTAGE_TOLERANCE`` is ridden out where stock
RedBeat exited (issue 30).
"""

from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from celery.beat import SchedulingError
from celery.schedules import crontab
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry
from redbeat import schedulers as redbeat_schedulers
from redbeat.schedulers import get_redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from tasks.core import compat, events, rabbitmq, records, redis_clients, slots
from tasks.core.message_writer import ShapeError, writes_messages
from tasks.core.messages import job_headers, queue_key, task_message
from tasks.core.schedules import (
    DISABLED_SCORE,
    SCHEDULE_SET,
    ZonedCrontab,
    celery_schedule,
    entry_key,
    is_ours,
    timing_from_json,
)
from tasks.core.settings import get_settings

logger = logging.getLogger(__name__)

# KEYS: the schedule's entry. ARGV: when, job id. Notes the last run on the entry unless
# the schedule was deleted meanwhile (a write would leave a stray hash behind).
LAST_RUN_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'last_run_at', ARGV[1], 'last_job', ARGV[2])
end
"""


BEAT_OUTAGE = compat.fix(
    "redbeat.outage",
    "celery-redbeat",
    "celery-redbeat 2.4.2, celery 5.7.0, redis 8.2.0",
    "RedBeat's stock tick: a Redis outage ends beat (its supervisor restarts it)",
    upstream="RedBeat's tick lets a Redis error escape and beat exits; its retry_period "
    "covers only the lock (not reported yet)",
)


def check_beat_outage() -> None:
    """What :meth:`JobQLScheduler.tick` relies on in RedBeat: its tick renews the lock first
    and then reads the due entries (so a Redis error comes out of it, and a lost lock as
    redis-py's ``LockNotOwnedError``), and its ``beat_init`` handler leaves a redis-py lock
    on ``scheduler.lock``, which can be acquired again without blocking."""
    tick = inspect.getsource(RedBeatScheduler.tick)
    renew, read = "self.lock.extend(int(self.lock_timeout))", "self.schedule.values()"
    if not (renew in tick and read in tick and tick.index(renew) < tick.index(read)):
        raise ShapeError("RedBeatScheduler.tick renews the lock, then reads the due entries")
    init = inspect.getsource(redbeat_schedulers.acquire_distributed_beat_lock)
    made = (
        "redis_client.lock(",
        "timeout=scheduler.lock_timeout",
        "sleep=scheduler.max_interval",
        "lock.lua_extend = redis_client.register_script(LUA_EXTEND_TO_SCRIPT)",
        "scheduler.lock = lock",
    )
    if not all(step in init for step in made):
        raise ShapeError("RedBeat's beat_init handler keeps a redis-py lock on scheduler.lock")
    if "blocking" not in inspect.signature(Lock.acquire).parameters:
        raise ShapeError("redis-py's Lock.acquire(blocking=...)")


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
        see tasks.core.app); as the API does (gql.services.jobs), an unsent run is ended and
        taken back, so its message, should it land after all, is dropped by its worker (the
        tick's next try makes a new one), unless a worker started it already."""
        if self._sender is None:
            from tasks.core.app import create_celery_app

            self._sender = create_celery_app(get_settings(), producer=True)
        events.announce(fields)
        try:
            self._sender.send_task(
                task,
                kwargs=kwargs,
                task_id=fields["id"],
                queue=fields["queue"],
                priority=rabbitmq.priority(get_settings().broker, priority),
                headers=job_headers(fields["owner"]),
            )
        except Exception:
            try:
                outcome = events.withdraw(fields)
            except Exception:
                # Its record and tick key stay: the tick's next try finds this job by the
                # key rather than starting another, and a message that lands runs it once.
                logger.exception("could not take back unsent job %s", fields["id"])
                raise
            if outcome in ("ok", "missing"):
                raise
            logger.warning("job %s: its send failed, but a worker started it", fields["id"])

    def close(self) -> None:
        if self._sender is not None:
            self._sender.close()


class JobQLScheduler(RedBeatScheduler):  # type: ignore[misc]
    Entry = JobQLEntry

    def __init__(self, app: Celery, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        self._runs = RunStarter(app)
        settings = get_settings()
        self._tolerance = settings.redis_outage_tolerance
        compat.decide(BEAT_OUTAGE, check_beat_outage, settings)
        self._down_since: float | None = None  # monotonic time Redis was first missed
        self._standby = False  # the lock expired during an outage: not ours until retaken
        self._told_standby = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """RedBeat's tick, through a Redis outage of up to ``JOBQL_REDIS_OUTAGE_TOLERANCE``.

        While Redis is away the schedules wait and beat tries again every second (a paused
        Redis answers each try after the socket timeout); past the tolerance it exits, for
        its supervisor to restart it. A lock that expired meanwhile is taken again if no
        other beat took it; else this beat stands by, as a second beat does at start-up
        (and so does a standby whose wait for the lock the outage broke).
        """
        if not BEAT_OUTAGE.active:
            return float(super().tick(*args, **kwargs))
        retry = min(1.0, float(self.max_interval))
        try:
            if self.lock_key and self.lock is None:
                self._new_lock()
            if self._standby and not self._retake_lock():
                interval = float(self.max_interval)  # Redis answered: another beat has it
            else:
                interval = float(super().tick(*args, **kwargs))
        except LockNotOwnedError:
            logger.warning("beat: the lock expired while Redis was away; taking it again")
            self._standby = True
            return retry
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                logger.warning(
                    "beat: Redis is unreachable (%s: %s); the schedules wait, trying again "
                    "for up to %s s (JOBQL_REDIS_OUTAGE_TOLERANCE)",
                    type(exc).__name__,
                    exc,
                    self._tolerance,
                )
            elif now - self._down_since > self._tolerance:
                logger.error(
                    "beat: Redis unreachable for %.0f s, past JOBQL_REDIS_OUTAGE_TOLERANCE; "
                    "exiting",
                    now - self._down_since,
                )
                raise
            return retry
        if self._down_since is not None:
            logger.warning(
                "beat: Redis is back after %.1f s; the schedules run again",
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return interval

    def _new_lock(self) -> None:
        """The lock RedBeat's ``beat_init`` handler makes, for a beat whose handler failed:
        Celery logs a receiver's error and goes on, so a standby waiting for the lock when
        Redis went away (or a beat started during an outage) has none, and RedBeat's tick
        would then fail on every call. It stands by until it can take the lock."""
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        lock.lua_extend = client.register_script(redbeat_schedulers.LUA_EXTEND_TO_SCRIPT)
        self.lock = lock
        self._standby = True

    def _retake_lock(self) -> bool:
        """Take the lock back after it expired in an outage, unless another beat holds it."""
        if self.lock.acquire(blocking=False):
            logger.info("beat: Acquired lock again")
            self._standby = self._told_standby = False
            return True
        if not self._told_standby:
            logger.info("beat: another beat holds the lock now; standing by")
            self._told_standby = True
        return False

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        ours = is_ours(entry.options)
        if ours is None:
            return super().apply_async(entry, producer, advance, **kwargs)
        # The run first, then the tick's record (RedBeat's reserve): a failure between the
        # two leaves the tick due, and the next try finds its job by the tick's key rather
        # than starting another. The other way round, an outage there skipped the tick.
        after = entry.last_run_at
        try:
            job_id = self._runs.start(entry.name, entry.task, dict(entry.kwargs or {}), ours, after)
        except Exception as exc:
            raise SchedulingError(f"could not start a run of schedule {entry.name}") from exc
        entry = self.reserve(entry) if advance else entry
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
