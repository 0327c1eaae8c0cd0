"""Results as Celery stores them: msgpack instead of JSON, compression above a threshold,
and a size limit that fails a job instead of writing a huge result to Redis."""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC, compress_payload

from devtools.valkey import EmbeddedValkey
from tasks.core import compat
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import GraphQL, running_api, running_worker, service_env
from tests.support.apps import worker_app

pytestmark = pytest.mark.slow

THRESHOLD = 1_000
LIMIT = 20_000
SETUP = {
    "JOBQL_SERIALIZER": "msgpack",
    "JOBQL_COMPRESSION": "gzip",
    "JOBQL_COMPRESSION_THRESHOLD_BYTES": str(THRESHOLD),
    "JOBQL_MAX_RESULT_BYTES": str(LIMIT),
    # These tests read Celery's own key: the copy kept for tools that read the keys.
    "JOBQL_CELERY_RESULTS": "copy",
}


@pytest.fixture(scope="module")
def stack(valkey: EmbeddedValkey, data_dir: Path) -> Iterator[tuple[GraphQL, Settings]]:
    """Its own worker and API (in a database of the session's Valkey of their own)."""
    here = data_dir / "results"
    url = valkey.url.rsplit("/", 1)[0] + "/3"
    env = service_env(url, here, **SETUP)
    settings = Settings(
        redis_url=url,
        serializer="msgpack",
        compression="gzip",
        compression_threshold_bytes=THRESHOLD,
        max_result_bytes=LIMIT,
        celery_results="copy",
    )
    with running_worker(env, here, settings), running_api(env, here) as client:
        yield client, settings


def _run(api: GraphQL, data: str) -> dict[str, object]:
    job = api.data(
        "mutation($d: JSON!) { processData(input: {data: $d, delay: 0}) { id } }", {"d": data}
    )["processData"]
    return api.wait_done(job["id"])


def _stored(settings: Settings, job_id: str) -> bytes:
    """What Celery's Redis result backend holds for the job, as bytes."""
    client = redis.Redis.from_url(settings.redis)
    try:
        raw = client.get(f"celery-task-meta-{job_id}")
    finally:
        client.close()
    assert isinstance(raw, bytes)
    return raw


def test_a_small_result_is_stored_as_msgpack_uncompressed(
    stack: tuple[GraphQL, Settings],
) -> None:
    api, settings = stack
    job = _run(api, "small")

    assert job["state"] == "SUCCESS" and job["result"]["processed"] == "small"
    stored = _stored(settings, job["id"])
    assert not stored.startswith(COMPRESSED_PAYLOAD_MAGIC)
    assert 0x80 <= stored[0] <= 0x8F, "a msgpack map, not JSON"
    with pytest.raises(ValueError):
        json.loads(stored)


def test_a_result_above_the_threshold_is_compressed_and_stock_celery_reads_it(
    stack: tuple[GraphQL, Settings],
) -> None:
    api, settings = stack
    data = "x" * (THRESHOLD * 5)
    job = _run(api, data)

    assert job["state"] == "SUCCESS" and job["result"]["processed"] == data
    stored = _stored(settings, job["id"])
    assert stored.startswith(COMPRESSED_PAYLOAD_MAGIC + b"application/x-gzip")
    assert len(stored) < THRESHOLD, "5 kB of x compress to a few dozen bytes"
    # Celery's own Redis backend (no JobQL code) decodes it: the format is Celery's.
    reader = create_celery_app(settings, producer=True)
    reader.conf.result_backend = settings.redis
    try:
        meta = reader.backend.get_task_meta(job["id"])
    finally:
        reader.close()
    assert type(reader.backend).__module__ == "celery.backends.redis"
    assert meta["status"] == "SUCCESS" and meta["result"]["processed"] == data


def test_a_result_over_the_limit_fails_the_job_unwritten(
    stack: tuple[GraphQL, Settings],
) -> None:
    api, settings = stack
    job = _run(api, "y" * LIMIT)

    assert job["state"] == "FAILURE"
    assert job["result"] is None
    assert job["error"]["type"] == "ResultTooLarge"
    assert str(LIMIT) in job["error"]["message"]
    assert len(_stored(settings, job["id"])) < 2_000, "Celery stored the error, not the result"
    # The worker goes on.
    assert _run(api, "after")["state"] == "SUCCESS"


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[tuple[Any, redis.Redis]]:
    """The worker's result backend on a Valkey of its own (its calls are counted)."""
    server = EmbeddedValkey(tmp_path / "valkey", persist=False).start()
    app = worker_app(Settings(redis_url=server.url))
    client = redis.Redis.from_url(server.url)
    try:
        yield app.backend, client
    finally:
        client.close()
        app.close()
        server.stop()


def _calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def test_an_outcome_is_stored_in_one_call_and_a_late_one_never_overwrites_a_success(
    backend: tuple[Any, redis.Redis],
) -> None:
    store, client = backend
    store.mark_as_done(str(uuid.uuid4()), {"n": 0})  # connected, the script loaded
    job_id = str(uuid.uuid4())
    before = _calls(client)
    store.mark_as_done(job_id, {"n": 1})
    after = _calls(client)
    made = {name: n - before.get(name, 0) for name, n in after.items() if n > before.get(name, 0)}
    if compat.REGISTER["celery.redis_backend_one_call_store"].active:
        # One round trip: the script, and in it the read, the write and the announcement.
        assert made == {"evalsha": 1, "get": 1, "setex": 1, "publish": 1, "info": 1}
    else:  # JOBQL_FAST_PATHS=false: Celery's own GET, then its MULTI pipeline
        assert made == {"get": 1, "multi": 1, "setex": 1, "publish": 1, "exec": 1, "info": 1}
    # A lost worker's late failure of the same job: Celery keeps the success.
    store.mark_as_failure(job_id, RuntimeError("late"))
    meta = store.get_task_meta(job_id)
    assert (meta["status"], meta["result"]) == ("SUCCESS", {"n": 1})
    assert 0 < client.ttl(f"celery-task-meta-{job_id}") <= store.expires

    # A stored value the script cannot read (compressed) is left to Celery's own store,
    # which reads it and keeps the success it holds.
    other = str(uuid.uuid4())
    success = {"status": "SUCCESS", "result": {"n": 2}, "task_id": other, "traceback": None}
    client.set(f"celery-task-meta-{other}", compress_payload(store.encode(success), "gzip"))
    path = compat.REGISTER["celery.redis_backend_one_call_store"]
    fallbacks = path.fallbacks
    store.mark_as_failure(other, RuntimeError("late"))
    assert store.get_task_meta(other)["result"] == {"n": 2}
    assert path.fallbacks == fallbacks + (1 if path.active else 0)


def test_a_result_backend_that_refuses_scripts_still_gets_every_outcome(
    backend: tuple[Any, redis.Redis],
) -> None:
    store, client = backend
    password = secrets.token_urlsafe(16)
    client.acl_setuser(
        "noscripts", enabled=True, passwords=[f"+{password}"], keys=["*"],
        channels=["*"], commands=["+@all", "-@scripting"],
    )  # fmt: skip
    where = client.connection_pool.connection_kwargs
    url = f"redis://noscripts:{password}@{where['host']}:{where['port']}/0"
    app = worker_app(Settings(redis_url=url))
    try:
        job_id = str(uuid.uuid4())
        app.backend.mark_as_done(job_id, {"n": 3})
        assert store.get_task_meta(job_id)["result"] == {"n": 3}
    finally:
        app.close()
