"""The key layout of job records (tasks.core.slots): every script call stays in one cluster slot,
and a listing merged from several tags is the same exact listing."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.crc import key_slot

from devtools.valkey import EmbeddedValkey
from gql.services.store import connect
from tasks.core import records, scripts, slots
from tasks.core.records import JobState
from tasks.core.scripts import PageQuery, ScriptCall
from tasks.core.settings import Settings
from tests.conftest import ROOT
from tests.tasks.core.test_records import store_with_ttl, write_job


@pytest.fixture
def four_tags() -> Iterator[None]:
    slots.configure(slots.Layout(shards=4))
    yield
    slots.configure(slots.Layout())


def one_slot(call: ScriptCall) -> int:
    found = {key_slot(key.encode()) for key in call.keys}
    assert len(found) == 1, call.keys
    return found.pop()


def test_each_tag_hashes_into_its_own_equal_range_of_slots() -> None:
    for shards in (1, 3, 16):
        tags = slots.tags_for(shards)
        assert len(set(tags)) == shards
        for index, tag in enumerate(tags):
            slot = key_slot(f"x{{{tag}}}y".encode())
            assert index * 16384 // shards <= slot < (index + 1) * 16384 // shards + 1


def test_every_script_call_of_a_job_touches_one_slot(four_tags: None) -> None:
    owner, task = "alice", "send_email"
    workflow = slots.new_id()
    job_id = slots.new_id(slots.tag_of(workflow))
    fields = records.new_record(
        job_id=job_id,
        task=task,
        owner=owner,
        queue="jobql",
        input_json={},
        created_at=records.now(),
        workflow_id=workflow,
    )
    slot = one_slot(scripts.create_call(fields, ttl=60))
    update = scripts.update_call(
        job_id, JobState.STARTED, owner=owner, task=task, ttl=60, workflow=workflow
    )
    assert one_slot(update) == slot
    for channel in records.channels_of(job_id, owner):  # SPUBLISHed by the scripts
        assert key_slot(channel.encode()) == slot, channel
    member = records.expiry_member(job_id, task)
    assert one_slot(scripts.sweep_call(owner, slots.tag_of(job_id), member)) == slot
    page = scripts.page_call(PageQuery(owner=owner, limit=5), slots.tag_of(job_id))
    assert one_slot(page) == slot

    keyed = records.new_record(
        job_id=slots.new_id(records.idempotency_tag(owner, "order-7")),
        task=task,
        owner=owner,
        queue="jobql",
        input_json={},
        created_at=records.now(),
        idempotency="order-7",
    )
    one_slot(scripts.create_call(keyed, ttl=60, idempotency="order-7"))
    # A job drawn on any other tag may not claim the key (the workflow's tag above is
    # random: it shares the key's tag one time in four).
    elsewhere = next(t for t in slots.tags_for(4) if t != records.idempotency_tag(owner, "order-7"))
    stray = {**fields, "id": slots.new_id(elsewhere)}
    with pytest.raises(ValueError, match="idempotency key's tag"):
        scripts.create_call(stray, ttl=60, idempotency="order-7")


@pytest.fixture
async def client(valkey: EmbeddedValkey, settings: Settings) -> AsyncIterator[aioredis.Redis]:
    redis = connect(valkey.url, settings)
    yield redis
    await redis.aclose()


async def test_a_listing_over_four_tags_is_every_match_once_newest_first(
    four_tags: None, client: aioredis.Redis, settings: Settings
) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    store = store_with_ttl(client, settings, 3600)
    made = []
    for n in range(17):
        state = JobState.FAILURE if n % 3 == 0 else JobState.SUCCESS
        made.append((await write_job(store, owner, "send_email", state), state))
    assert len({slots.tag_of(job.id) for job, _ in made}) > 1
    failed = [job.id for job, state in reversed(made) if state is JobState.FAILURE]

    seen: list[str] = []
    after = None
    while True:
        query = PageQuery(owner=owner, limit=2, after=after, states=frozenset({JobState.FAILURE}))
        page = await store.page(query)
        seen += [job.id for job in page]
        if len(page) < 2:
            break
        after = (records.to_score(page[-1].created_at), page[-1].id)
    assert seen == failed
    everything = await store.page(PageQuery(owner=owner, limit=100))
    assert [job.id for job in everything] == [job.id for job, _ in reversed(made)]


def test_a_cluster_holds_records_and_events_but_never_celerys_broker() -> None:
    one, nodes = "redis://broker:6379/0", "redis://node-1:7000"
    settings = Settings(redis_url=one, records_url=nodes, records_cluster=True)
    assert (settings.records, settings.broadcast, settings.broker) == (nodes, nodes, one)
    assert settings.layout == slots.Layout(shards=16, sharded_pubsub=True)
    assert Settings(redis_url=one).layout == slots.Layout(shards=1, sharded_pubsub=False)

    with pytest.raises(ValidationError, match="Celery has no cluster support"):
        Settings(redis_url=one, records_url=nodes, records_cluster=True, broker_url=nodes)
    with pytest.raises(ValidationError, match="JOBQL_BROADCAST_URL must be the records"):
        Settings(redis_url=one, records_url=nodes, records_cluster=True, broadcast_url=one)
    with pytest.raises(ValidationError, match="needs JOBQL_RECORDS_URL"):
        Settings(redis_url=one, records_cluster=True)


def test_jobql_check_counts_records_of_the_layout_before_hash_tags(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(valkey.url)
    old = f"{records.JOB_KEY_PREFIX}{uuid.uuid4()}"
    client.hset(old, mapping={"state": "SUCCESS"})
    try:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JOBQL_ENV": "test",
               "JOBQL_REDIS_URL": valkey.url}  # fmt: skip
        result = subprocess.run([sys.executable, "-m", "gql.cli", "check"], capture_output=True,
                                text=True, cwd=tmp_path, env=env, timeout=60)  # fmt: skip
        # A container's probe (--worker, --beat) runs every few seconds: it scans nothing.
        probe = subprocess.run([sys.executable, "-m", "gql.cli", "check", "--worker", "w@h"],
                               capture_output=True, text=True, cwd=tmp_path, env=env,
                               timeout=60)  # fmt: skip
    finally:
        client.delete(old)
        client.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "job records of the layout before hash tags are not read until `jobql migrate`"
        in result.stdout
    )
    assert "layout before hash tags" not in probe.stdout and "worker w@h" in probe.stdout
