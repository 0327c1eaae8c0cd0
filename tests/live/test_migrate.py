"""``jobql migrate`` as an operator runs it, against a live API and worker: records of the layout
before hash tags and current records of format 1 are rewritten, resumably and once, and every job
reads through the API afterwards; a message without the format header still runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core import formats
from tasks.core.messages import FORMAT_HEADER, task_message
from tasks.core.records import JobState, index_key, new_record, to_score
from tasks.core.scripts import CREATE_SCRIPT, create_call
from tasks.core.settings import Settings
from tests.conftest import GraphQL, running_api, running_worker, service_env

ROOT = Path(__file__).resolve().parents[2]
JOBQL = ROOT / ".venv" / "bin" / "jobql"
OWNERS = ("anonymous", "mallory")
TASKS = ("process_data", "send_email")
TTL = 3600


# The layout before hash tags, exactly as 0.8.0 wrote it: commit c029118 (the parent of the
# merge "Merge branch 'cluster'", 16d7c00), tasks/records.py and tasks/scripts.py.
def old_job_key(job_id: str) -> str:
    return "jobql:job:" + job_id


def old_index_key(owner: str, *, state: JobState | None = None, task: str | None = None) -> str:
    key = f"jobql:index:{{{owner}}}"
    if state is not None:
        key += f":state:{state.value}"
    if task is not None:
        key += f":task:{task}"
    return key


def old_expiry_key(owner: str) -> str:
    return f"jobql:expiry:{{{owner}}}"


def old_idempotency_key(owner: str, key: str) -> str:
    return f"jobql:idem:{owner}:{key}"


OLD_OWNERS_KEY = "jobql:owners"


def write_old_job(client: redis.Redis, n: int, now: datetime) -> dict[str, str]:
    """One job as 0.8.0's create script and then its update script left it in its state."""
    owner, task = OWNERS[n % 2], TASKS[n // 2 % 2]
    state = list(JobState)[n % len(JobState)]
    job_id = f"00000000-0000-4000-8000-{n:012d}"
    created = now - timedelta(minutes=60 - n)
    fields = {
        "id": job_id, "task": task, "owner": owner, "queue": "jobql", "state": state.value,
        "sequence": "0" if state is JobState.PENDING else "2", "retries": "0",
        "input": json.dumps({"data": f"old {n}", "delay": 0}, separators=(",", ":")),
        "created_at": created.isoformat(),
        "idempotency_key": f"order-{n}" if n % 10 == 0 else "",
    }  # fmt: skip
    if state.done:
        fields["finished_at"] = (created + timedelta(seconds=5)).isoformat()
    if state is JobState.SUCCESS:
        fields["result"] = json.dumps({"processed": f"old {n}", "status": "complete"})
    score = to_score(created)
    pipe = client.pipeline(transaction=True)
    pipe.hset(old_job_key(job_id), mapping=fields)
    pipe.expire(old_job_key(job_id), TTL)
    for index in (
        old_index_key(owner),
        old_index_key(owner, task=task),
        old_index_key(owner, state=state),
        old_index_key(owner, state=state, task=task),
    ):
        pipe.zadd(index, {job_id: score})  # fmt: skip
    expires = to_score(now) + TTL * 1_000_000
    pipe.zadd(old_expiry_key(owner), {json.dumps([job_id, task], separators=(",", ":")): expires})
    pipe.sadd(OLD_OWNERS_KEY, owner)
    if fields["idempotency_key"]:
        pipe.set(old_idempotency_key(owner, fields["idempotency_key"]), job_id, ex=TTL)
    pipe.execute()
    return fields


def write_format_1_job(client: redis.Redis, n: int, now: datetime) -> str:
    """A job of the current layout as 0.9.0 wrote it: no format field."""
    fields = new_record(job_id=f"11111111-0000-4000-8000-{n:012d}", task="process_data",
                        owner="anonymous", queue="jobql", input_json={"data": "x"},
                        created_at=now)  # fmt: skip
    del fields[formats.FORMAT_FIELD]
    call = create_call(fields, ttl=TTL)
    client.eval(CREATE_SCRIPT, len(call.keys), *call.keys, *call.args)
    return fields["id"]


def jobql(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(JOBQL), *args], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def counts(output: str) -> dict[str, int]:
    found = re.search(r"jobs: seen (\d+), (?:would be )?rewritten from the untagged layout (\d+), "
                      r"(?:would be )?given their format (\d+), already current (\d+), "
                      r"skipped (\d+)", output)  # fmt: skip
    assert found, output
    names = ("seen", "rewritten", "versioned", "current", "skipped")
    return dict(zip(names, map(int, found.groups()), strict=True))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[redis.Redis, dict, GraphQL]]:
    """A Valkey of this test's own (its counts are exact), with a worker and the API."""
    data_dir = tmp_path_factory.mktemp("migrate")
    server = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(server.url, data_dir)
    env = {k: v for k, v in env.items() if k != "JOBQL_BROKER_URL"}  # the records' Redis
    settings = Settings(redis_url=server.url, data_dir=data_dir, extra_queues=("reports",),
                        env="test")  # fmt: skip
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
            yield client, env, api
    finally:
        client.close()
        server.stop()


JOBS = """query($f: JobFilter) { jobs(first: 100, filter: $f) { edges { node { id } } } }"""
JOB = """query($id: ID!) { job(id: $id) { id state task result } }"""


@pytest.mark.skipif(os.environ.get("JOBQL_TEST_BROKER") == "rabbitmq", reason="Redis broker")
def test_migrate_rewrites_what_older_releases_left_once_and_resumably(
    live: tuple[redis.Redis, dict[str, str], GraphQL],
) -> None:
    client, env, api = live
    now = datetime.now(UTC)
    old = [write_old_job(client, n, now) for n in range(50)]
    current = [write_format_1_job(client, n, now) for n in range(6)]
    assert "50 job records of the layout before hash tags" in jobql(env, "check")

    dry = counts(jobql(env, "migrate", "--dry-run"))
    assert dry == {"seen": 56, "rewritten": 50, "versioned": 6, "current": 0, "skipped": 0}
    first = counts(jobql(env, "migrate", "--limit", "10"))
    assert first["seen"] == 10 and client.exists("jobql:migrate")
    second_output = jobql(env, "migrate")
    assert "resuming the last run" in second_output and "done:" in second_output
    second = counts(second_output)
    # The stopped run's batch is scanned again: what it did is "already current" then.
    assert first["rewritten"] + second["rewritten"] == 50
    assert first["versioned"] + second["versioned"] == 6
    assert second["skipped"] == 0 and not client.exists("jobql:migrate")
    again = counts(jobql(env, "migrate"))
    assert again == {"seen": 56, "rewritten": 0, "versioned": 0, "current": 56, "skipped": 0}

    # Nothing of the old layout is left, and `jobql check` no longer counts any.
    assert [k for k in client.scan_iter("jobql:job:*") if "{" not in k] == []
    assert [
        k for k in client.scan_iter("jobql:index:*") if not k.startswith("jobql:index:{0}")
    ] == []
    assert not client.exists(OLD_OWNERS_KEY, *map(old_expiry_key, OWNERS))
    assert "layout before hash tags" not in jobql(env, "check")
    for job_id in current:
        assert client.hget(f"jobql:job:{{0}}:{job_id}", "v") == "2"
    # Each migrated record kept its TTL, and its idempotency key moved with it.
    ttl = client.ttl(f"jobql:job:{{0}}:{old[0]['id']}")
    assert 0 < ttl <= TTL
    assert client.get(f"jobql:idem:{{0}}:{old[0]['owner']}:order-0") == old[0]["id"]

    # Every migrated job of the API's caller (anonymous: authentication is off) reads
    # through the API and lists under its state and task; the other owner's are where its
    # listing would look, in the indexes of the tagged layout.
    mine = [f for f in old if f["owner"] == "anonymous"]
    for fields in mine:
        job = api.data(JOB, {"id": fields["id"]})["job"]
        assert (job["state"], job["task"]) == (fields["state"], fields["task"]), job
    for state in JobState:
        for task in TASKS:
            listed = api.data(JOBS, {"f": {"states": [state.value], "task": task}})["jobs"]
            ids = {edge["node"]["id"] for edge in listed["edges"]} & {f["id"] for f in old}
            expected = {f["id"] for f in mine if (f["state"], f["task"]) == (state.value, task)}
            assert ids == expected, (state, task)
    for fields in old:
        owner, state, task = fields["owner"], JobState(fields["state"]), fields["task"]
        for index in (
            index_key(owner, "0"),
            index_key(owner, "0", state=state, task=task),
            index_key(owner, "0", state=state),
            index_key(owner, "0", task=task),
        ):
            assert client.zscore(index, fields["id"]) is not None, (index, fields)  # fmt: skip
    assert client.smembers("jobql:owners:{0}") >= set(OWNERS)

    # A PENDING job of the old release, whose message (no format header) was still queued,
    # now runs: the worker finds its record where the current code looks.
    pending = next(f for f in old if f["state"] == "PENDING" and f["task"] == "process_data")
    message = json.loads(task_message(task="process_data", job_id=pending["id"],
                                      kwargs=json.loads(pending["input"]),
                                      queue="jobql", now=datetime.now(UTC),
                                      owner=pending["owner"]))  # fmt: skip
    del message["headers"][FORMAT_HEADER]
    client.lpush("jobql", json.dumps(message))
    deadline = time.monotonic() + 30
    while (done := api.data(JOB, {"id": pending["id"]})["job"])["state"] != "SUCCESS":
        assert time.monotonic() < deadline and done["state"] != "FAILURE", done
        time.sleep(0.1)
    processed = json.loads(pending["input"])["data"]
    assert done["result"] == {"processed": processed, "status": "complete"}
