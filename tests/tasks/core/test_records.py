"""The record scripts against a real Valkey, written and read through the shared builders."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import redis.asyncio as aioredis

from devtools.valkey import EmbeddedValkey
from gql.services.store import JobStore, connect
from tasks.core import records, scripts, slots
from tasks.core.records import JobSnapshot, JobState
from tasks.core.scripts import PageQuery
from tasks.core.settings import Settings

OLD_SCAN_LIMIT = 10_000


@pytest.fixture
async def client(valkey: EmbeddedValkey, settings: Settings) -> AsyncIterator[aioredis.Redis]:
    redis = connect(valkey.url, settings)
    yield redis
    await redis.aclose()


@pytest.fixture
def owner() -> str:
    """Each test lists the jobs of its own owner, so tests never see each other's jobs."""
    return f"owner-{uuid.uuid4().hex[:8]}"


def store_with_ttl(client: aioredis.Redis, settings: Settings, ttl: int) -> JobStore:
    return JobStore(client, settings.model_copy(update={"job_retention_seconds": ttl}))


async def write_jobs(
    store: JobStore, owner: str, task: str, count: int, start: datetime
) -> list[dict[str, str]]:
    """``count`` PENDING records one microsecond apart, through the create script, pipelined."""
    made = []
    for first in range(0, count, 1000):
        async with store.client.pipeline(transaction=False) as pipe:
            for n in range(first, min(count, first + 1000)):
                fields = records.new_record(
                    job_id=str(uuid.uuid4()),
                    task=task,
                    owner=owner,
                    queue="jobql",
                    input_json={"n": n},
                    created_at=start + timedelta(microseconds=n),
                )
                call = scripts.create_call(fields, ttl=3600)
                await store._create(keys=call.keys, args=call.args, client=pipe)
                made.append(fields)
            await pipe.execute()
    return made


async def write_job(store: JobStore, owner: str, task: str, state: JobState) -> JobSnapshot:
    (fields,) = await write_jobs(store, owner, task, 1, records.now())
    snapshot = JobSnapshot.from_hash(fields)
    if state is not JobState.PENDING:
        assert await store.transition(snapshot, state, {}, frozenset()) == "ok"
    return snapshot


async def ids(store: JobStore, query: PageQuery) -> list[str]:
    return [snapshot.id for snapshot in await store.page(query)]


async def test_matches_buried_behind_many_newer_jobs_are_found(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 3600)
    failed = await write_job(store, owner, "send_email", JobState.FAILURE)
    await write_jobs(store, owner, "process_data", OLD_SCAN_LIMIT + 500, records.now())

    def query(**filters: object) -> PageQuery:
        return PageQuery(owner=owner, limit=6, **filters)  # type: ignore[arg-type]

    assert await ids(store, query(states=frozenset({JobState.FAILURE}))) == [failed.id]
    assert await ids(store, query(task="send_email")) == [failed.id]
    both = query(states=frozenset({JobState.FAILURE, JobState.SUCCESS}), task="send_email")
    assert await ids(store, both) == [failed.id]
    window = query(
        created_after=failed.created_at - timedelta(microseconds=1),
        created_before=failed.created_at + timedelta(microseconds=1),
    )
    assert await ids(store, window) == [failed.id]
    assert len(await ids(store, query())) == 6


async def test_a_filtered_walk_visits_every_match_once_while_jobs_arrive(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 3600)
    matches: list[str] = []
    for n in range(23):
        state = JobState.FAILURE if n % 3 == 0 else JobState.SUCCESS
        job = await write_job(store, owner, "send_email" if n % 2 else "process_data", state)
        if state is JobState.FAILURE:
            matches.append(job.id)
    states = frozenset({JobState.FAILURE})

    seen: list[str] = []
    after = None
    while True:
        page = await store.page(PageQuery(owner=owner, limit=3, after=after, states=states))
        seen += [s.id for s in page[:2]]
        # Newer jobs, matching ones too, arrive at the front while the walk goes on.
        await write_job(store, owner, "send_email", JobState.FAILURE)
        await write_job(store, owner, "process_data", JobState.SUCCESS)
        if len(page) <= 2:
            break
        after = (records.to_score(page[1].created_at), page[1].id)

    assert seen == list(reversed(matches))


async def test_the_last_page_knows_there_is_no_next_one(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 3600)
    for _ in range(4):
        await write_job(store, owner, "send_email", JobState.RETRY)
        await write_job(store, owner, "send_email", JobState.STARTED)
    retrying = frozenset({JobState.RETRY})

    assert len(await ids(store, PageQuery(owner=owner, limit=4, states=retrying))) == 4
    assert len(await ids(store, PageQuery(owner=owner, limit=5, states=retrying))) == 4


async def test_jobs_created_in_the_same_microsecond_are_paged_by_id(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 3600)
    moment = records.now()
    for _ in range(7):
        await write_jobs(store, owner, "process_data", 1, moment)
    every = await ids(store, PageQuery(owner=owner, limit=10))
    assert every == sorted(every, reverse=True) and len(every) == 7

    seen: list[str] = []
    after = None
    while page := await store.page(PageQuery(owner=owner, limit=2, after=after)):
        seen += [s.id for s in page]
        after = (records.to_score(moment), page[-1].id)
    assert seen == every


async def test_a_state_change_moves_the_job_between_indexes(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 3600)
    job = await write_job(store, owner, "send_email", JobState.STARTED)

    def listed(state: JobState) -> PageQuery:
        return PageQuery(owner=owner, limit=5, states=frozenset({state}), task="send_email")

    assert await ids(store, listed(JobState.STARTED)) == [job.id]
    assert await store.transition(job, JobState.SUCCESS, {}, frozenset()) == "ok"
    assert await ids(store, listed(JobState.STARTED)) == []
    assert await ids(store, listed(JobState.SUCCESS)) == [job.id]
    assert await store.transition(job, JobState.PROGRESS, {}, frozenset()) == "SUCCESS"
    assert await ids(store, listed(JobState.SUCCESS)) == [job.id]


async def test_an_update_with_the_wrong_owner_is_told_the_right_one(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 3600)
    job = await write_job(store, owner, "send_email", JobState.PENDING)
    call = scripts.update_call(job.id, JobState.STARTED, owner="anonymous", task="?", ttl=60)
    answer = await store._update(keys=call.keys, args=call.args)
    assert scripts.moved(answer) == (owner, "send_email", "")
    assert (await store.get(job.id)).state is JobState.PENDING  # type: ignore[union-attr]


async def test_an_expired_record_leaves_every_index(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 1)
    gone = await write_job(store, owner, "send_email", JobState.FAILURE)
    await asyncio.sleep(2.1)

    assert await store.page(PageQuery(owner=owner, limit=5)) == []
    assert await store.sweep() >= 1
    tag = slots.tag_of(gone.id)
    for key in [*records.indexes_of(owner, "send_email", tag), records.expiry_key(owner, tag)]:
        assert await client.zcard(key) == 0, key
    assert not await client.exists(records.job_key(gone.id))


async def test_a_record_lives_and_stays_listed_as_long_as_it_keeps_changing(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    store = store_with_ttl(client, settings, 2)
    job = await write_job(store, owner, "send_email", JobState.PENDING)
    await asyncio.sleep(1.2)
    assert await store.transition(job, JobState.STARTED, {}, frozenset()) == "ok"
    await asyncio.sleep(1.2)  # past creation + TTL, within the last change + TTL

    await store.sweep()
    assert await ids(store, PageQuery(owner=owner, limit=5)) == [job.id]
    started = frozenset({JobState.STARTED})
    assert await ids(store, PageQuery(owner=owner, limit=5, states=started)) == [job.id]


async def test_a_result_beyond_what_orjson_reads_comes_back_exactly(
    client: aioredis.Redis, settings: Settings, owner: str
) -> None:
    """Records are decoded with orjson where it reads as the standard library does; a
    value it would round or refuse (a 70-bit integer, NaN, a lone surrogate) still comes
    back as written, by the job read and by the page."""
    store = store_with_ttl(client, settings, 3600)
    job = await write_job(store, owner, "send_email", JobState.STARTED)
    fields = {
        "result": f'{{"big":{2**70},"small":{-(2**64) - 1},"ratio":0.1}}',
        "progress": '{"current":1,"data":{"odd":"\\ud800","nan":NaN,"huge":1e400}}',
    }
    assert await store.transition(job, JobState.SUCCESS, fields, frozenset()) == "ok"
    read = await store.get(job.id)
    (listed,) = await store.page(PageQuery(owner=owner, limit=5))
    for snapshot in (read, listed):
        assert snapshot is not None and snapshot.progress is not None
        assert snapshot.result == {"big": 2**70, "small": -(2**64) - 1, "ratio": 0.1}
        assert isinstance(snapshot.result["big"], int)
        data = snapshot.progress["data"]
        assert data["odd"] == "\ud800" and data["huge"] == float("inf")
        assert data["nan"] != data["nan"]  # NaN, as json reads it


def test_a_record_is_written_as_the_standard_library_writes_it() -> None:
    """Flat strings go through orjson: every code point comes out as json.dumps has it,
    and what orjson refuses or writes otherwise (a lone surrogate, a float) is json's."""
    every = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    values: list[object] = [
        {"input": every[n : n + 4096], "id": "x"} for n in range(0, len(every), 4096)
    ]
    values += [{"odd": "\ud800"}, ["a", "\udfff"], {"n": 0.1, "big": 1e16}, {1: "a"}, [1.5]]
    for value in values:
        assert records.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
