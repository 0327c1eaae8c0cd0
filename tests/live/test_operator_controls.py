"""The operator's controls on a stack of their own (a pause reaches every worker of the broker):
authentication on, an admin and two owners; a queue paused with a job held, a worker started
during the pause leaving it alone, then resumed and the job run; dead letters listed per owner,
requeued and discarded. (Bulk controls per owner are in ``test_security``.)"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.dead_letters import DEAD_LETTER_KEY
from tasks.core.messages import task_message
from tasks.core.records import job_key
from tasks.core.settings import Settings
from tests.conftest import running_api, running_worker, service_env

pytestmark = pytest.mark.slow

KEYS = {owner: secrets.token_urlsafe(24) for owner in ("ops", "alice", "bob")}
W1 = "ops-w1"
REPORT = (
    "mutation($i: GenerateReportInput!) "
    '{ generateReport(input: $i, options: {queue: "reports"}) { id state } }'
)
QUEUES = "{ queues { name pending consumers workers paused pausedSince pausedBy } }"
PAUSE = "mutation($n: String!) { pauseQueue(name: $n) { name paused pausedBy consumers } }"
RESUME = "mutation($n: String!) { resumeQueue(name: $n) { name paused pausedBy } }"
LETTERS = """
query($first: Int!, $after: String) {
  deadLetters(first: $first, after: $after) {
    nodes { id queue reason jobId task owner requeueable unreadable size }
    hasNextPage endCursor
  }
}
"""
REQUEUE = (
    "mutation($id: ID!) { requeueDeadLetter(id: $id) { jobId queue retryOf deadLetter { id } } }"
)
DISCARD = "mutation($id: ID!) { discardDeadLetter(id: $id) { id reason } }"
JOB = "query($id: ID!) { job(id: $id) { id state error { type } } }"


@dataclass
class Stack:
    url: str
    env: dict[str, str]
    settings: Settings
    data_dir: Path
    store: redis.Redis

    def call(self, owner: str, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"ApiKey {KEYS[owner]}"},
            timeout=30,
        )
        assert response.status_code in (200, 403, 404), response.text
        return dict(response.json())

    def data(self, owner: str, query: str, **variables: Any) -> dict[str, Any]:
        body = self.call(owner, query, **variables)
        assert "errors" not in body, body["errors"]
        return dict(body["data"])

    def error(self, owner: str, query: str, **variables: Any) -> dict[str, Any]:
        body = self.call(owner, query, **variables)
        assert body.get("errors"), body
        return dict(body["errors"][0])

    def state(self, job_id: str) -> str | None:
        return self.store.hget(job_key(job_id), "state")  # type: ignore[return-value]


def _eventually(check: Callable[[], Any], within: float = 30) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("operator")
    server = EmbeddedValkey(data_dir / "valkey").start()
    keys = {hashlib.sha256(key.encode()).hexdigest(): owner for owner, key in KEYS.items()}
    env = service_env(
        server.url,
        data_dir,
        JOBQL_AUTH_MODE="api_key",
        JOBQL_API_KEYS=json.dumps(keys),
        JOBQL_ADMIN_OWNERS='["ops"]',
        JOBQL_EXTRA_QUEUES='["reports", "side"]',
        JOBQL_WORKER_HEARTBEAT_INTERVAL="0.5",
        JOBQL_INSPECT_CACHE_SECONDS="0.2",
    )
    settings = Settings(redis_url=server.url, data_dir=data_dir, extra_queues=("reports", "side"),
                        env="test")  # fmt: skip
    store = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        # The main worker leaves "side" to the dead-letter test's worker.
        queues = ("jobql", "reports", "jobql.webhooks")
        with (
            running_worker(env, data_dir, settings, queues=queues, name=W1),
            running_api(env, data_dir) as api,
        ):
            yield Stack(api.base_url, env, settings, data_dir, store)
    finally:
        store.close()
        server.stop()


def _queue(stack: Stack, name: str) -> dict[str, Any]:
    queues = stack.data("ops", QUEUES)["queues"]
    return next(q for q in queues if q["name"] == name)


def _worker_queues(stack: Stack) -> dict[str, list[str]]:
    workers = stack.data("ops", "{ workers { name queues } }")["workers"]
    return {w["name"].split("@")[0]: w["queues"] for w in workers}


def test_a_paused_queue_holds_its_jobs_even_for_a_worker_started_meanwhile_then_runs_them(
    stack: Stack,
) -> None:
    denied = stack.error("alice", PAUSE, n="reports")
    assert denied["extensions"]["code"] == "FORBIDDEN"
    unknown = stack.error("ops", PAUSE, n="nowhere")
    assert unknown["extensions"]["code"] == "BAD_USER_INPUT"
    assert unknown["extensions"]["fields"][0]["path"] == "name"

    paused = stack.data("ops", PAUSE, n="reports")["pauseQueue"]
    assert paused["paused"] and paused["pausedBy"] == "ops"
    try:
        held = stack.data("alice", REPORT, i={"userId": 7, "steps": 1, "stepDelay": 0})
        job_id = held["generateReport"]["id"]
        time.sleep(1.0)
        assert stack.state(job_id) == "PENDING", "a paused queue's job waits"
        assert _eventually(lambda: _queue(stack, "reports")["consumers"] == 0)
        queue = _queue(stack, "reports")
        assert queue["paused"] and queue["pending"] == 1 and queue["pausedSince"]
        ready = httpx.get(f"{stack.url}/health/ready", timeout=10)
        body = ready.json()
        assert body["paused"] == ["reports"], ready.text
        # Only a queue nobody consumes unpaused makes it unready ("side" here, on purpose).
        unserved = [q for q, workers in body["queues"].items() if not workers]
        assert sorted(unserved) == ["reports", "side"] and ready.status_code == 503

        # A worker that starts now, configured for "reports", leaves it alone.
        late = "ops-late"
        with running_worker(stack.env, stack.data_dir, stack.settings, queues=("reports", "jobql"),
                            concurrency=1, name=late):  # fmt: skip
            assert _eventually(lambda: _worker_queues(stack).get(late) == ["jobql"])
            time.sleep(0.5)
            assert stack.state(job_id) == "PENDING", "nor does a worker started meanwhile"

            resumed = stack.data("ops", RESUME, n="reports")["resumeQueue"]
            assert not resumed["paused"] and resumed["pausedBy"] is None
            assert _eventually(lambda: stack.state(job_id) == "SUCCESS"), stack.state(job_id)

            def both() -> bool:
                queues = _worker_queues(stack)
                return queues.get(late) == ["jobql", "reports"] and "reports" in queues.get(W1, [])

            assert _eventually(both), _worker_queues(stack)
    finally:
        stack.call("ops", RESUME, n="reports")
    assert not _queue(stack, "reports")["paused"]
    again = stack.data("ops", RESUME, n="reports")["resumeQueue"]
    assert not again["paused"], "resuming a running queue changes nothing"


def _letters(stack: Stack, owner: str, first: int = 50, after: str | None = None) -> dict:
    return stack.data(owner, LETTERS, first=first, after=after)["deadLetters"]


def test_dead_letters_are_listed_per_owner_requeued_to_run_and_discarded(stack: Stack) -> None:
    stack.store.delete(DEAD_LETTER_KEY)
    # A worker of an older release, without the task modules the API knows.
    old_env = {**stack.env, "JOBQL_TASK_MODULES": '["tasks.examples"]'}
    with running_worker(old_env, stack.data_dir, stack.settings, queues=("side",), concurrency=1):
        recorded = stack.data(
            "alice",
            'mutation { enqueue(task: "native.countdown", input: {n: 1, delay: 0}, '
            'options: {queue: "side"}) { id } }',
        )["enqueue"]["id"]
        plain = str(uuid.uuid4())  # sent with plain Celery: no record
        message = task_message(task="native.countdown", job_id=plain, kwargs={"n": 1, "delay": 0},
                               queue="side", now=datetime.now(UTC), owner="alice")  # fmt: skip
        stack.store.lpush("side", message)
        stack.store.lpush("side", "{not json")
        assert _eventually(lambda: stack.store.llen(DEAD_LETTER_KEY) == 3), stack.store.lrange(
            DEAD_LETTER_KEY, 0, -1
        )
    failed = stack.data("alice", JOB, id=recorded)["job"]
    assert failed["state"] == "FAILURE" and failed["error"]["type"] == "NotRegistered"

    everything = _letters(stack, "ops")["nodes"]
    assert len(everything) == 3
    assert _letters(stack, "ops")["nodes"] == everything, "ids and entries hold across reads"
    mine = _letters(stack, "alice")["nodes"]
    assert {n["jobId"] for n in mine} == {recorded, plain}
    assert all(n["requeueable"] and n["owner"] == "alice" for n in mine)
    assert _letters(stack, "bob")["nodes"] == [], "another owner sees none of them"
    garbage = next(n for n in everything if n["owner"] is None)
    assert not garbage["requeueable"] and "not JSON" in garbage["unreadable"]

    page = _letters(stack, "ops", first=2)
    rest = _letters(stack, "ops", first=2, after=page["endCursor"])
    assert page["hasNextPage"] and not rest["hasNextPage"]
    assert [n["id"] for n in page["nodes"] + rest["nodes"]] == [n["id"] for n in everything]

    hidden = stack.error("alice", REQUEUE, id=garbage["id"])
    assert hidden["extensions"]["code"] == "NOT_FOUND", "an entry without an owner is admins'"
    refused = stack.error("ops", REQUEUE, id=garbage["id"])
    assert refused["extensions"]["code"] == "BAD_USER_INPUT"
    assert refused["extensions"]["fields"][0]["path"] == "id"
    assert stack.data("ops", DISCARD, id=garbage["id"])["discardDeadLetter"]["id"] == garbage["id"]
    gone = stack.error("ops", DISCARD, id=garbage["id"])
    assert gone["extensions"]["code"] == "NOT_FOUND"

    # The release with the task is deployed: the main worker takes "side" too.
    control = create_celery_app(stack.settings, producer=True).control
    try:
        control.add_consumer("side", destination=[f"{W1}@{socket.gethostname()}"], reply=True,
                             timeout=5)  # fmt: skip
        by_job = {n["jobId"]: n["id"] for n in mine}
        rerun = stack.data("alice", REQUEUE, id=by_job[recorded])["requeueDeadLetter"]
        assert rerun["retryOf"] == recorded and rerun["queue"] == "side"
        assert _eventually(lambda: stack.state(rerun["jobId"]) == "SUCCESS")
        retried = stack.data(
            "alice", "mutation($id: ID!) { retryJob(id: $id) { id } }", id=recorded
        )
        assert retried["retryJob"]["id"] == rerun["jobId"], "the requeue was the job's one retry"

        back = stack.data("alice", REQUEUE, id=by_job[plain])["requeueDeadLetter"]
        assert back["retryOf"] is None and back["jobId"] == plain and back["queue"] == "side"
        assert _eventually(lambda: stack.state(plain) == "SUCCESS"), "the message itself ran"
        twice = stack.error("alice", REQUEUE, id=by_job[plain])
        assert twice["extensions"]["code"] == "NOT_FOUND", "a requeued entry is off the list"
    finally:
        control.cancel_consumer("side", destination=[f"{W1}@{socket.gethostname()}"], reply=True,
                                timeout=5)  # fmt: skip
        control.app.close()
    assert _letters(stack, "ops")["nodes"] == []
