"""Celery's result stored in one call (tasks.core.result_scripts), as the worker's tracer
calls the result backend and then ``JobTask.on_success`` records the job, on a Valkey of its
own: what a client reads from the record, what stock Celery reads from its result backend,
and how many calls it took.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.app.task import Context
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC

from devtools.valkey import EmbeddedValkey
from tasks.core import events, records, redis_clients
from tasks.core.app import create_celery_app
from tasks.core.records import JobState
from tasks.core.settings import get_settings
from tasks.worker import results
from tests.support.apps import worker_app

TASK = "send_email"
THRESHOLD = 1_000


@pytest.fixture
def worker_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, redis.Redis]]:
    """This process as a worker process: its result backend and its records on one Valkey."""
    server = EmbeddedValkey(tmp_path / "valkey", persist=False).start()
    monkeypatch.setenv("JOBQL_REDIS_URL", server.url)
    monkeypatch.setenv("JOBQL_COMPRESSION", "gzip")
    monkeypatch.setenv("JOBQL_COMPRESSION_THRESHOLD_BYTES", str(THRESHOLD))
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    get_settings.cache_clear()
    app = worker_app(get_settings())
    client = redis.Redis.from_url(server.url)
    try:
        yield app.backend, client
    finally:
        client.close()
        app.close()
        get_settings.cache_clear()
        server.stop()


def _started() -> str:
    fields = records.new_record(
        job_id=str(uuid.uuid4()), task=TASK, owner="ada", queue="jobql",
        input_json={}, created_at=records.now(),
    )  # fmt: skip
    events.create(fields)
    assert events.started(fields["id"], TASK, 0, {}, "jobql") == "ok"
    return fields["id"]


def _finish(backend: Any, job_id: str, result: Any, payload: str) -> Context:
    """What the tracer does at a success: Celery's store, then ``JobTask.on_success``."""
    request = Context(id=job_id, task=TASK, jobql_result_json=payload)
    backend.mark_as_done(job_id, result, request=request)
    events.succeeded(job_id, TASK, result, payload)
    return request


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def _record(client: redis.Redis, job_id: str) -> dict[str, str]:
    raw = client.hgetall(records.job_key(job_id))
    return {k.decode(): v.decode() for k, v in raw.items()}


def _stock_meta(job_id: str) -> dict[str, Any]:
    """The result as a stock Celery reader (no JobQL code) reads it."""
    settings = get_settings()
    reader = create_celery_app(settings, producer=True)
    reader.conf.result_backend = settings.redis
    try:
        assert type(reader.backend).__module__ == "celery.backends.redis"
        meta: dict[str, Any] = reader.backend.get_task_meta(job_id)
        return meta
    finally:
        reader.close()


def test_a_success_is_stored_in_one_call_and_recorded_in_another(
    worker_side: tuple[Any, redis.Redis],
) -> None:
    backend, client = worker_side
    _finish(backend, _started(), {"n": 0}, '{"n":0}')  # connected, scripts loaded
    job_id = _started()

    before = _calls(client)
    _finish(backend, job_id, {"n": 1}, '{"n":1}')
    made = {name: n - before.get(name, 0) for name, n in _calls(client).items()}

    # Celery's store as one script, then the record's update; with JOBQL_FAST_PATHS=false
    # Celery's own GET and MULTI pipeline, then the update.
    if results.ONE_CALL_STORE.active:
        assert (made["evalsha"], made.get("multi", 0)) == (2, 0)
    else:
        assert (made["evalsha"], made["multi"]) == (1, 1)
    record = _record(client, job_id)
    assert (record["state"], record["result"], record["sequence"]) == ("SUCCESS", '{"n":1}', "2")
    meta = _stock_meta(job_id)
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"n": 1})
    assert 0 < client.ttl(f"celery-task-meta-{job_id}") <= backend.expires


def test_a_late_success_changes_neither_the_stored_result_nor_the_record(
    worker_side: tuple[Any, redis.Redis],
) -> None:
    backend, client = worker_side
    job_id = _started()
    _finish(backend, job_id, {"n": 1}, '{"n":1}')
    sequence = _record(client, job_id)["sequence"]

    _finish(backend, job_id, {"n": 2}, '{"n":2}')  # a redelivered run's outcome

    assert _stock_meta(job_id)["result"] == {"n": 1}
    record = _record(client, job_id)
    assert (record["result"], record["sequence"]) == ('{"n":1}', sequence)


def test_a_job_cancelled_mid_run_stays_revoked_while_celery_stores_its_success(
    worker_side: tuple[Any, redis.Redis],
) -> None:
    """Celery stores what the run returned, the record keeps the cancellation a client was
    told of."""
    backend, client = worker_side
    job_id = _started()
    events.revoked(job_id, TASK, expired=False, terminated=False)

    _finish(backend, job_id, {"n": 1}, '{"n":1}')

    assert _record(client, job_id)["state"] == JobState.REVOKED
    assert _stock_meta(job_id)["status"] == "SUCCESS"


def test_a_result_above_the_threshold_is_compressed_in_the_same_call(
    worker_side: tuple[Any, redis.Redis],
) -> None:
    backend, client = worker_side
    job_id = _started()
    data = "x" * (THRESHOLD * 5)

    _finish(backend, job_id, {"data": data}, f'{{"data":"{data}"}}')

    stored = client.get(f"celery-task-meta-{job_id}")
    assert isinstance(stored, bytes)
    assert stored.startswith(COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip")
    assert _stock_meta(job_id)["result"] == {"data": data}
    assert _record(client, job_id)["state"] == "SUCCESS"
