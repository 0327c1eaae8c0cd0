"""Jobs under faults, against the session's real worker: a killed pool child, a poison job.

Each job's side effect is keyed by its id (``tests.support.native_tasks.effect``): a run counts
itself in ``RUNS_KEY`` and does the effect only if no run did it before.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL
from tests.support.clients import graphql_transport_ws
from tests.support.ledger import Ledger
from tests.support.native_tasks import EFFECTS_KEY, RUNS_KEY

ENQUEUE = 'mutation($i: JSON!) { enqueue(task: "reliability.effect", input: $i) { id } }'
WATCH = """subscription($id: ID!) { job(id: $id) {
  state attempts redelivery worker error { type message } progress { data } } }"""
FIELDS = "state attempts redelivery worker retries error { type message } progress { data }"
READ = f"query($id: ID!) {{ job(id: $id) {{ {FIELDS} }} }}"


async def _read(api: AsyncGraphQL, job_id: str) -> dict[str, Any]:
    job: dict[str, Any] = (await api.data(READ, {"id": job_id}))["job"]
    return job


async def _until(api: AsyncGraphQL, job_id: str, ok: Any, within: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        job = await _read(api, job_id)
        if ok(job):
            return job
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} stuck: {job}"
        await asyncio.sleep(0.05)


async def test_a_killed_pool_child_reruns_the_job_as_a_visible_second_attempt(
    async_api: AsyncGraphQL, valkey: EmbeddedValkey, ledger: Ledger
) -> None:
    job_id = (await async_api.data(ENQUEUE, {"i": {"seconds": 2}}))["enqueue"]["id"]
    watch = asyncio.create_task(
        graphql_transport_ws(async_api.base_url, WATCH, {"id": job_id}, within=60)
    )
    running = await _until(async_api, job_id, lambda j: j["state"] == "PROGRESS")
    first = running["progress"]["data"]["pid"]
    assert running["attempts"] == 1 and running["redelivery"] is None
    assert running["worker"], "the job names the worker running it"

    os.kill(first, signal.SIGKILL)  # the pool child running the job

    done = await _until(async_api, job_id, lambda j: j["state"] == "SUCCESS")
    stream = await asyncio.wait_for(watch, 60)
    assert done["attempts"] == 2
    assert "worker lost" in done["redelivery"]
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        runs = [int(pid) for pid in client.lrange(RUNS_KEY + job_id, 0, -1)]
        assert len(runs) == 2 and runs[0] == first and runs[1] != first
        assert client.hget(EFFECTS_KEY, job_id) == str(runs[1]), "the effect happened once"
    finally:
        client.close()
    seen = stream.jobs
    assert stream.completed and seen[-1]["state"] == "SUCCESS"
    assert "FAILURE" not in [j["state"] for j in seen], "never a FAILURE from a lost worker"
    assert any(j["attempts"] == 2 and j["redelivery"] for j in seen), "the watcher saw the re-run"
    ledger.submitted, ledger.terminal["SUCCESS"], ledger.reruns = 1, 1, 1
    ledger.subscribers, ledger.subscribers_ended = 1, 1
    ledger.settle()


async def test_a_poison_job_fails_after_a_bounded_number_of_attempts_and_others_still_run(
    async_api: AsyncGraphQL, ledger: Ledger
) -> None:
    poison = (await async_api.data(ENQUEUE, {"i": {"die": True}}))["enqueue"]["id"]

    failed = await _until(async_api, poison, lambda j: j["state"] == "FAILURE", within=90)

    assert failed["error"]["type"] == "WorkerLost"
    assert "lost 4 times" in failed["error"]["message"]  # JOBQL_MAX_WORKER_LOSSES=3, then no more
    assert failed["attempts"] == 4
    healthy = (await async_api.data(ENQUEUE, {"i": {"seconds": 0}}))["enqueue"]["id"]
    assert (await _until(async_api, healthy, lambda j: j["state"] == "SUCCESS"))["attempts"] == 1
    ledger.submitted, ledger.terminal["FAILURE"], ledger.terminal["SUCCESS"] = 2, 1, 1
    ledger.reruns = 1
    ledger.settle()


def test_a_visibility_timeout_not_above_the_time_limit_is_refused_at_start_up() -> None:
    """A job still running when kombu redelivers its message would run twice at once."""
    with pytest.raises(ValidationError, match="JOBQL_VISIBILITY_TIMEOUT must exceed"):
        Settings(redis_url="redis://127.0.0.1:1/0", task_time_limit=600, visibility_timeout=600)
    longer = Settings(redis_url="redis://127.0.0.1:1/0", task_time_limit=7200)
    assert longer.redelivery_after == 14400
