"""The schedule store against a real Valkey: what the API writes is what RedBeat reads, a
run beat records survives the API's changes, and one tick starts one job however often."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from celery import Celery
from celery.schedules import schedule

from devtools.valkey import EmbeddedValkey
from gql.services.schedule_store import NameTaken, RedisScheduleStore, TooManySchedules
from gql.services.store import connect
from tasks.core import records, redis_clients
from tasks.core.app import create_celery_app
from tasks.core.schedules import (
    DISABLED_SCORE,
    SCHEDULE_SET,
    Crontab,
    Interval,
    ScheduleRecord,
    Timing,
    ZonedCrontab,
    entry_key,
)
from tasks.core.settings import Settings, get_settings
from tasks.worker.beat import JobQLEntry, JobQLScheduler, RunStarter


@pytest.fixture
async def client(valkey: EmbeddedValkey, settings: Settings) -> AsyncIterator[aioredis.Redis]:
    redis = connect(valkey.url, settings)
    yield redis
    await redis.aclose()


@pytest.fixture
def beat_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a beat process is: JOBQL_REDIS_URL in its environment, read afresh
    (an earlier test may have cached settings without it) and a worker client of its own."""
    monkeypatch.setenv("JOBQL_REDIS_URL", settings.redis)
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def app(settings: Settings) -> Celery:
    """The worker's Celery app as beat builds it, RedBeat's settings included."""
    return create_celery_app(settings)


FIVE_SECONDS = Interval(5)


def new_schedule(
    timing: Timing = FIVE_SECONDS, zone: str = "UTC", enabled: bool = True, name: str = "tick"
) -> ScheduleRecord:
    now = records.now()
    return ScheduleRecord(
        id=str(uuid.uuid4()),
        owner=f"owner-{uuid.uuid4().hex[:8]}",
        name=name,
        task="process_data",
        input={"data": 1, "delay": 0.0},
        kwargs={"data": 1, "delay": 0.0},
        timing=timing,
        timezone=zone,
        enabled=enabled,
        queue="jobql",
        priority=None,
        created_at=now,
        updated_at=now,
        since=now,
    )


async def test_what_the_api_writes_is_what_redbeat_reads(
    client: aioredis.Redis, app: Celery
) -> None:
    store = RedisScheduleStore(client)
    every = new_schedule(Interval(5))
    nightly = new_schedule(Crontab(minute="0", hour="3"), zone="Europe/Paris")
    for record in (every, nightly):
        await store.create(record, limit=10)

    entry = JobQLEntry.from_key(entry_key(every.id), app=app)
    assert (entry.name, entry.task, entry.kwargs, entry.enabled) == (
        every.id,
        "process_data",
        {"data": 1, "delay": 0.0},
        True,
    )
    assert isinstance(entry.schedule, schedule) and entry.schedule.run_every == timedelta(seconds=5)
    assert entry.last_run_at == every.since, "the first run is an interval after the creation"
    score = await client.zscore(SCHEDULE_SET, entry_key(every.id))
    assert score == pytest.approx((every.since + timedelta(seconds=5)).timestamp())

    cron = JobQLEntry.from_key(entry_key(nightly.id), app=app)
    assert isinstance(cron.schedule, ZonedCrontab)
    assert cron.schedule.tz == ZoneInfo("Europe/Paris") and cron.schedule.hour == {3}
    assert not cron.is_due()[0]
    assert await store.list(every.owner) == [every]
    assert await store.get(nightly.id) == nightly

    advanced = next(cron)  # what beat does after a run: RedBeat rescores the entry
    paris_3am = advanced.last_run_at.astimezone(ZoneInfo("Europe/Paris")) + timedelta(days=1)
    paris_3am = paris_3am.replace(hour=3, minute=0, second=0, microsecond=0)
    if advanced.last_run_at.astimezone(ZoneInfo("Europe/Paris")).hour < 3:
        paris_3am -= timedelta(days=1)
    score = await client.zscore(SCHEDULE_SET, entry_key(nightly.id))
    assert score == pytest.approx(paris_3am.timestamp())
    assert (await store.get(nightly.id)).runs == 1  # type: ignore[union-attr]


async def test_a_run_beat_records_survives_the_apis_changes(
    client: aioredis.Redis, app: Celery
) -> None:
    store = RedisScheduleStore(client)
    record = new_schedule(Interval(5))
    await store.create(record, limit=10)

    ran = next(JobQLEntry.from_key(entry_key(record.id), app=app))  # what beat does per run

    renamed = await store.update(record.id, lambda r: r.changed(records.now(), name="renamed"))
    assert renamed is not None and renamed.runs == 1 and renamed.since == ran.last_run_at
    assert [r.name for r in await store.list(record.owner)] == ["renamed"]
    retimed = await store.update(record.id, lambda r: r.changed(records.now(), timing=Interval(60)))
    assert retimed is not None and retimed.runs == 1, "the count survives a new timing"
    assert retimed.since > ran.last_run_at, "a new timing counts from now"


async def test_names_are_unique_per_owner_and_schedules_are_bounded(
    client: aioredis.Redis,
) -> None:
    store = RedisScheduleStore(client)
    first = new_schedule(name="same")
    await store.create(first, limit=2)
    with pytest.raises(NameTaken):
        await store.create(ScheduleRecord(**{**_fields(new_schedule()), "owner": first.owner,
                                             "name": "same"}), limit=2)  # fmt: skip
    await store.create(new_schedule(name="same"), limit=2)  # another owner's
    await store.create(ScheduleRecord(**{**_fields(new_schedule()), "owner": first.owner}), limit=2)
    with pytest.raises(TooManySchedules):
        await store.create(
            ScheduleRecord(**{**_fields(new_schedule()), "owner": first.owner, "name": "third"}),
            limit=2,
        )
    assert await store.delete(first.id) and not await store.delete(first.id)
    assert [r.name for r in await store.list(first.owner)] == ["tick"]


async def test_of_two_creates_with_one_name_at_once_one_wins(client: aioredis.Redis) -> None:
    store = RedisScheduleStore(client)
    first = new_schedule(name="race")
    second = ScheduleRecord(**{**_fields(new_schedule()), "owner": first.owner, "name": "race"})
    outcomes = await asyncio.gather(
        store.create(first, limit=10), store.create(second, limit=10), return_exceptions=True
    )
    assert sorted(type(o).__name__ for o in outcomes) == ["NameTaken", "NoneType"]
    assert len(await store.list(first.owner)) == 1
    assert await client.zcard(SCHEDULE_SET) >= 1


def _fields(record: ScheduleRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


async def test_a_disabled_schedule_is_never_loaded_by_beat(client: aioredis.Redis) -> None:
    store = RedisScheduleStore(client)
    record = new_schedule(enabled=False)
    await store.create(record, limit=10)
    assert await client.zscore(SCHEDULE_SET, entry_key(record.id)) == DISABLED_SCORE
    enabled = await store.update(record.id, lambda r: r.changed(records.now(), enabled=True))
    assert enabled is not None and enabled.next_run_at(records.now()) is not None
    assert await client.zscore(SCHEDULE_SET, entry_key(record.id)) > 0


async def test_one_tick_starts_one_job_however_often_it_is_started(
    client: aioredis.Redis, app: Celery, settings: Settings, beat_env: None
) -> None:
    record = new_schedule()
    ours = {"owner": record.owner, "name": record.name, "input": record.input, "queue": "q-test"}
    starter = RunStarter(app)
    try:
        first = starter.start(record.id, record.task, record.kwargs, ours, record.since)
        again = starter.start(record.id, record.task, record.kwargs, ours, record.since)
        later = starter.start(record.id, record.task, record.kwargs, ours, records.now())
    finally:
        starter.close()
    assert first == again != later
    job = records.JobSnapshot.from_hash(await client.hgetall(records.job_key(first)))  # type: ignore[misc]
    assert (job.owner, job.schedule, job.schedule_id, job.input) == (
        record.owner,
        "tick",
        record.id,
        record.input,
    )
    assert await client.llen("q-test") == 2, "one message per tick"  # type: ignore[misc]
    await client.delete("q-test")


async def test_beat_follows_a_change_or_a_deletion_made_while_it_ran(
    client: aioredis.Redis, app: Celery, settings: Settings, beat_env: None
) -> None:
    store = RedisScheduleStore(client)
    hourly, doomed = (
        ScheduleRecord(**{**_fields(new_schedule(Interval(3600))), "queue": "q-follow"})
        for _ in range(2)
    )
    for record in (hourly, doomed):
        await store.create(record, limit=10)
    # A tick begins: beat loads both entries as they are now...
    loaded = [JobQLEntry.from_key(entry_key(r.id), app=app) for r in (hourly, doomed)]
    # ...and before it runs them, one is sped up to every second and the other deleted.
    await store.update(hourly.id, lambda r: r.changed(records.now(), timing=Interval(1)))
    await store.delete(doomed.id)

    scheduler = JobQLScheduler(app=app)
    try:
        for entry in loaded:
            scheduler.apply_async(entry)
    finally:
        scheduler.close()

    score = await client.zscore(SCHEDULE_SET, entry_key(hourly.id))
    assert score is not None and score < time.time() + 5, "it waits a second, not an hour"
    assert not await client.exists(entry_key(doomed.id)), "nothing of it is left behind"
    assert await client.zscore(SCHEDULE_SET, entry_key(doomed.id)) is None
    await client.delete("q-follow")
