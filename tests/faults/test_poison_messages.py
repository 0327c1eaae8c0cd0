"""Poison messages never stop a queue (issue 30, item 2).

A task message the worker cannot turn into a run (a body of the wrong shape, an unknown
task, arguments of the wrong type, a body that does not decode) is acknowledged, kept on
the dead-letter list with its reason, and its job, if recorded, fails with a readable
error; the same worker process goes on with the next message. A lone worker of this
module's queue takes the poison: the session's worker is never put at risk.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.valkey import EmbeddedValkey
from tasks.core.messages import task_message
from tasks.core.records import job_key
from tasks.core.settings import Settings
from tasks.worker.broker import DEAD_LETTER_KEY
from tests.conftest import GraphQL, running_api, running_worker, service_env
from tests.support.ledger import Ledger, scale

pytestmark = pytest.mark.slow

QUEUE = "poison-test"
STAGING = "poison-staging"  # nobody consumes it: an enqueued job's message waits there


@pytest.fixture(scope="module")
def poison_env(valkey: EmbeddedValkey, data_dir: Path) -> dict[str, str]:
    return service_env(valkey.url, data_dir, JOBQL_EXTRA_QUEUES=f'["{QUEUE}", "{STAGING}"]')


@pytest.fixture(scope="module")
def lone_worker(
    poison_env: dict[str, str], data_dir: Path, settings: Settings
) -> Iterator[subprocess.Popen[bytes]]:
    with running_worker(poison_env, data_dir, settings, queues=(QUEUE,), concurrency=1) as worker:
        yield worker


@pytest.fixture(scope="module")
def client(valkey: EmbeddedValkey) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(valkey.url, decode_responses=True)
    yield connection
    connection.delete(DEAD_LETTER_KEY)
    connection.close()


def _good(job_id: str, task: str = "process_data") -> dict[str, Any]:
    raw = task_message(
        task=task,
        job_id=job_id,
        kwargs={"data": 2, "delay": 0},
        queue=QUEUE,
        now=datetime.now(UTC),
    )
    envelope: dict[str, Any] = json.loads(raw)
    return envelope


def _with_body(envelope: dict[str, Any], body: bytes) -> dict[str, Any]:
    return {**envelope, "body": base64.b64encode(body).decode()}


def _keeps_serving(client: redis.Redis, worker: subprocess.Popen[bytes]) -> None:
    """A normal job pushed behind the poison succeeds on the same worker process, and no
    message of the queue is left unacknowledged."""
    canary = str(uuid.uuid4())
    client.lpush(QUEUE, json.dumps(_good(canary)))
    deadline = time.monotonic() + 60
    while client.hget(job_key(canary), "state") != "SUCCESS":
        assert worker.poll() is None, "a poison message ended the worker"
        assert time.monotonic() < deadline, "the job behind the poison never ran"
        time.sleep(0.05)
    while _unacked(client):
        assert time.monotonic() < deadline, f"left unacknowledged: {_unacked(client)}"
        time.sleep(0.05)
    assert worker.poll() is None
    assert client.llen(QUEUE) == 0


def _unacked(client: redis.Redis) -> list[str]:
    """kombu's unacknowledged messages (message, exchange, routing key) of this module's queue."""
    entries: list[str] = client.hvals("unacked")  # type: ignore[assignment]
    return [raw for raw in entries if json.loads(raw)[2] == QUEUE]


def _dead_letters(client: redis.Redis) -> list[dict[str, Any]]:
    return [json.loads(entry) for entry in client.lrange(DEAD_LETTER_KEY, 0, -1)]  # type: ignore[union-attr]


# The probe's messages, and the other ways a message may name what cannot run: each is a
# valid envelope around a body or headers the worker cannot turn into a run.
MANGLED: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str]] = {
    "an object body": (lambda m: _with_body(m, b'{"a": 1}'), "InvalidMessage"),
    "a one-item list body": (lambda m: _with_body(m, b"[1]"), "InvalidMessage"),
    "a null body": (lambda m: _with_body(m, b"null"), "InvalidMessage"),
    "a body that is not JSON": (lambda m: _with_body(m, b"\x80not json"), "InvalidMessage"),
    "kwargs that are not a mapping": (
        lambda m: _with_body(m, b'[[], [1, 2], {"callbacks": null}]'),
        "InvalidMessage",
    ),
    "an unknown task": (
        lambda m: {**m, "headers": {**m["headers"], "task": "no.such.task"}},
        "NotRegistered",
    ),
    "a pickled body": (
        lambda m: {**m, "content-type": "application/x-python-serialize"},
        "InvalidMessage",
    ),
}


@pytest.fixture(scope="module")
def api(poison_env: dict[str, str], data_dir: Path) -> Iterator[GraphQL]:
    with running_api(poison_env, data_dir) as client:
        yield client


@pytest.mark.parametrize("mangled", list(MANGLED))
def test_a_job_whose_message_arrives_mangled_fails_with_a_readable_error_and_the_queue_goes_on(
    api: GraphQL,
    client: redis.Redis,
    lone_worker: subprocess.Popen[bytes],
    ledger: Ledger,
    mangled: str,
) -> None:
    mangle, kind = MANGLED[mangled]
    client.delete(DEAD_LETTER_KEY)
    job_id = api.data(
        'mutation($q: String!) { enqueue(task: "process_data", input: {data: 1}, '
        "options: {queue: $q}) { id } }",
        {"q": STAGING},
    )["enqueue"]["id"]
    message = json.loads(client.rpop(STAGING))  # type: ignore[arg-type]
    assert message["headers"]["id"] == job_id
    message["properties"]["delivery_info"]["routing_key"] = QUEUE  # sent to the worker's queue
    client.lpush(QUEUE, json.dumps(mangle(message)))  # as the probe pushed it

    job = api.wait_done(job_id)
    assert job["state"] == "FAILURE", job
    assert job["error"]["type"] == kind and job["error"]["message"], job["error"]
    (kept,) = _dead_letters(client)
    assert kept["id"] == job_id and kept["queue"] == QUEUE
    assert kept["reason"].startswith(kind) and kept["raw"]
    _keeps_serving(client, lone_worker)
    ledger.submitted, ledger.terminal["FAILURE"], ledger.terminal["SUCCESS"] = 2, 1, 1
    ledger.notes.append(f"set aside as {kind}")
    ledger.settle()


# Fuzzed poison: a valid message with one or more defects, each enough on its own to make
# it unrunnable, over the envelope (what kombu reads) and the body (what Celery reads).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
NOT_A_LIST = JSON.filter(lambda v: not isinstance(v, list))
NOT_AN_OBJECT = JSON.filter(lambda v: not isinstance(v, dict))


def _runnable_shape(body: Any) -> bool:
    """Protocol 2's [args, kwargs, embed], or an older body with args (and kwargs)."""
    if isinstance(body, list):
        return (
            len(body) == 3
            and isinstance(body[0], list)
            and isinstance(body[1], dict)
            and (body[2] is None or isinstance(body[2], dict))
        )
    return (
        isinstance(body, dict)
        and "args" in body
        and isinstance(body["args"], list)
        and isinstance(body.get("kwargs", {}), dict)
    )


Defect = Callable[[dict[str, Any]], dict[str, Any]]


def _json_body(value: Any) -> Defect:
    return lambda m: _with_body(m, json.dumps(value).encode())


def _headers(**changes: Any) -> Defect:
    return lambda m: {**m, "headers": {**m["headers"], **changes}}


def _without_header(name: str) -> Defect:
    return lambda m: {**m, "headers": {k: v for k, v in m["headers"].items() if k != name}}


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


DEFECTS = st.one_of(
    JSON.filter(lambda v: not _runnable_shape(v)).map(_json_body),
    st.binary(min_size=1, max_size=40).filter(_not_json).map(lambda b: lambda m: _with_body(m, b)),
    st.tuples(NOT_A_LIST, st.booleans()).map(
        lambda a: _json_body([a[0], {}, {}] if a[1] else [a[0], {}])
    ),
    NOT_AN_OBJECT.map(lambda k: _json_body([[], k, {}])),
    st.text(max_size=12).map(lambda t: _headers(task=f"no.such.{t}")),
    JSON.filter(lambda v: not isinstance(v, str) or not v).map(lambda t: _headers(task=t)),
    JSON.filter(lambda v: not isinstance(v, str) or not v).map(lambda i: _headers(id=i)),
    st.sampled_from(["id", "task"]).map(_without_header),
    st.sampled_from(["not a date", "2026-13-45", "12"]).map(lambda e: _headers(eta=e)),
    JSON.filter(lambda v: v and not isinstance(v, list)).map(lambda t: _headers(timelimit=t)),
    st.sampled_from(["application/x-python-serialize", "application/x-yaml", "text/plain"]).map(
        lambda c: lambda m: {**m, "content-type": c}
    ),
    # The envelope itself (tasks.worker.broker's check): a body that is not base64, no properties.
    st.just(lambda m: {**m, "body": "%%% not base64"}),
    st.just(lambda m: {k: v for k, v in m.items() if k != "properties"}),
)
POISON = st.lists(st.lists(DEFECTS, min_size=1, max_size=3), min_size=1, max_size=4)


def test_fuzzed_poison_messages_never_stop_the_queue(
    client: redis.Redis, lone_worker: subprocess.Popen[bytes], ledger: Ledger
) -> None:
    pid = lone_worker.pid
    pushed = examples = 0
    started = time.monotonic()

    @settings(
        max_examples=scale(25, 300),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(POISON)
    def poison_then_a_normal_job(
        batch: list[list[Callable[[dict[str, Any]], dict[str, Any]]]],
    ) -> None:
        nonlocal pushed, examples
        client.delete(DEAD_LETTER_KEY)
        for defects in batch:
            message = _good(str(uuid.uuid4()))
            for defect in defects:
                message = defect(message)
            client.lpush(QUEUE, json.dumps(message))
        _keeps_serving(client, lone_worker)
        kept = _dead_letters(client)
        assert len(kept) == len(batch), kept
        assert all(entry["reason"] and entry["queue"] == QUEUE for entry in kept)
        pushed += len(batch)
        examples += 1

    poison_then_a_normal_job()
    assert lone_worker.pid == pid and lone_worker.poll() is None
    ledger.submitted = pushed + examples  # each example's normal job too
    ledger.rejected["dead-letter"], ledger.terminal["SUCCESS"] = pushed, examples
    ledger.notes.append(
        f"{pushed} poison messages in {examples} batches, each followed by a normal job, "
        f"in {time.monotonic() - started:.1f} s; the worker's pid unchanged"
    )
    ledger.settle()
