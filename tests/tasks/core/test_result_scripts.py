"""A job's success stored with its record in one call (tasks.core.result_scripts), as the worker's
tracer calls Celery's result backend, on a Valkey of its own: what a client reads from the
record and what stock Celery reads from its result backend, and how many calls it took.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.app import trace
from celery.app.task import Context
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC

from devtools.valkey import EmbeddedValkey
from tasks.core import compat, events, records, redis_clients
from tasks.core.app import create_celery_app
from tasks.core.records import JobState
from tasks.core.result_backends import WITH_RECORD_KEY
from tasks.core.settings import Settings, get_settings
from tasks.worker import results

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
    app = create_celery_app(get_settings())
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
    if not getattr(request, "jobql_recorded", False):
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


def test_a_success_is_stored_and_recorded_in_one_call(worker_side: tuple[Any, redis.Redis]) -> None:
    backend, client = worker_side
    _finish(backend, _started(), {"n": 0}, '{"n":0}')  # connected, scripts loaded
    job_id = _started()
    joined = results.ONE_CALL_SUCCESS.active

    before = _calls(client)
    request = _finish(backend, job_id, {"n": 1}, '{"n":1}')
    made = {name: n - before.get(name, 0) for name, n in _calls(client).items()}

    # One script call with the fast path; without, the record's update and Celery's store
    # (its one-call script, or with JOBQL_FAST_PATHS=false its GET and MULTI pipeline).
    if joined:
        assert (made["evalsha"], made.get("multi", 0)) == (1, 0)
    elif results.ONE_CALL_STORE.active:
        assert (made["evalsha"], made.get("multi", 0)) == (2, 0)
    else:
        assert (made["evalsha"], made["multi"]) == (1, 1)
    assert getattr(request, "jobql_recorded", False) is joined
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
    """As with the two separate calls: Celery stores what the run returned, the record
    keeps the cancellation a client was told of."""
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


def test_the_one_call_success_turns_off_loudly_when_the_tracer_changes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If Celery stopped storing a success before ``on_success`` (or without the request the
    task ran in), the record would be written twice or never: it is off, with a warning."""

    def build_tracer(*args: Any, **kwargs: Any) -> None:
        """Stores after on_success: push_request(task_request)
        task_on_success(retval, uuid, args, kwargs)
        mark_as_done(uuid, retval, task_request, publish_result)
        """

    monkeypatch.setattr(trace, "build_tracer", build_tracer)
    settings = Settings(redis_url="redis://127.0.0.1:6390/0", env="test", fast_paths=True)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="tasks.core.compat"):
        options = results.worker_options(settings)

    assert options[WITH_RECORD_KEY] is False
    path = compat.report()[results.ONE_CALL_SUCCESS.name]
    assert path["active"] is False and "on_success" in str(path["reason"])
    assert any(results.ONE_CALL_SUCCESS.name in r.getMessage() for r in caplog.records)
    # The plain one-call store leans on none of that: it stays on.
    assert results.ONE_CALL_STORE.active
    monkeypatch.undo()
    assert results.worker_options(settings)[WITH_RECORD_KEY] is True
