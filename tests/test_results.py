"""Results as Celery stores them: msgpack instead of JSON, compression above a threshold,
and a size limit that fails a job instead of writing a huge result to Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC

from devtools.valkey import EmbeddedValkey
from tasks.app import create_celery_app
from tasks.settings import Settings
from tests.conftest import GraphQL, running_api, running_worker, service_env

pytestmark = pytest.mark.slow

THRESHOLD = 1_000
LIMIT = 20_000
SETUP = {
    "JOBQL_SERIALIZER": "msgpack",
    "JOBQL_COMPRESSION": "gzip",
    "JOBQL_COMPRESSION_THRESHOLD_BYTES": str(THRESHOLD),
    "JOBQL_MAX_RESULT_BYTES": str(LIMIT),
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
