"""A finished job's outcome is stored once, in its record (``JOBQL_CELERY_RESULTS=final``), and
Celery's ``AsyncResult`` still reads it: state, result, ``get()`` (promptly, through Celery's
pub/sub waiter), the exception re-raised with its type and traceback, chords whose header nests
a group (their join reads the parts' results); with ``all`` Celery's own keys are kept, progress
included. The memory test compares MEMORY USAGE of a job's keys with stock Celery's entry.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, chord, group

from devtools.valkey import EmbeddedValkey
from tasks.core import records
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tasks.examples import PermanentEmailError
from tests.conftest import GraphQL, running_worker, service_env
from tests.support.apps import worker_app

pytestmark = pytest.mark.slow

META = "celery-task-meta-"
PROCESS = "mutation { processData(input: { data: { n: 1 }, delay: 0 }) { id } }"
FAIL = (
    'mutation { sendEmail(input: { to: "eve@nowhere.invalid", subject: "s", body: "b" }) { id } }'
)


def _redis_backend(settings: Settings) -> None:
    if not settings.result_backend.startswith("redis"):
        pytest.skip("the outcome is stored once on a Redis result backend")


def _plain_client(settings: Settings) -> Celery:
    """A plain Celery app, as a user writes one: JobQL's backend named by its dotted path, no
    JobQL settings at all (the records are on the backend's Redis, in one hash tag)."""
    app = Celery(
        "plain-client",
        broker=settings.broker,
        backend=f"tasks.worker.results:RedisBackend+{settings.result_backend}",
        set_as_current=False,
    )
    app.conf.update(task_default_queue=settings.default_queue, result_extended=True)
    return app


def _key(settings: Settings, job_id: str) -> Any:
    client = redis.Redis.from_url(settings.result_backend)
    try:
        return client.get(META + job_id)
    finally:
        client.close()


def test_a_jobs_outcome_is_in_its_record_only_and_asyncresult_reads_it(
    api: GraphQL, settings: Settings
) -> None:
    _redis_backend(settings)
    done = api.wait_done(api.data(PROCESS)["processData"]["id"])
    failed = api.wait_done(api.data(FAIL)["sendEmail"]["id"])
    assert _key(settings, done["id"]) is None and _key(settings, failed["id"]) is None
    # The record's own error, as JobQL shows it, is the exception's type and words.
    assert failed["error"]["type"] == "PermanentEmailError", failed["error"]
    app = create_celery_app(settings)
    try:
        result = app.AsyncResult(done["id"])
        assert (result.state, result.result) == ("SUCCESS", done["result"])
        assert result.ready() and result.successful()
        assert result.get(timeout=5) == done["result"]
        assert result.name == "process_data" and result.date_done is not None

        failure = app.AsyncResult(failed["id"])
        assert failure.state == "FAILURE" and failure.ready() and not failure.successful()
        assert isinstance(failure.result, PermanentEmailError)
        assert "PermanentEmailError" in (failure.traceback or "")
        with pytest.raises(PermanentEmailError, match="no mail server accepts mail"):
            failure.get(timeout=5)
        # A job nobody ran is PENDING, as Celery says of an id it does not know.
        assert app.AsyncResult(str(uuid.uuid4())).state == "PENDING"
    finally:
        app.close()


@pytest.mark.usefixtures("worker")  # a run of these alone starts none
def test_get_returns_as_the_job_finishes_for_a_plain_celery_client(settings: Settings) -> None:
    _redis_backend(settings)
    app = _plain_client(settings)
    try:
        started = time.monotonic()
        sent = app.send_task("native.countdown", kwargs={"n": 3, "delay": 0.3})
        assert sent.get(timeout=20) == {"counted": 3}
        assert time.monotonic() - started < 10
        assert _key(settings, sent.id) is None, "no celery-task-meta- key beside the record"
        assert app.AsyncResult(sent.id).state == "SUCCESS"

        # Retried once, then failed: the retry is announced, the failure raised again.
        flaky = app.send_task("timeline.flaky")
        with pytest.raises(RuntimeError, match="second try fails too"):
            flaky.get(timeout=20)
        assert app.AsyncResult(flaky.id).retries == 1
        # A task on Celery's own base class (recorded through the worker's signals).
        boom = app.send_task("plain.boom", kwargs={"message": "gone"})
        with pytest.raises(KeyError, match="gone"):
            boom.get(timeout=20)
        assert _key(settings, boom.id) is None
    finally:
        app.close()


@pytest.mark.usefixtures("worker")  # a run of these alone starts none
def test_a_chord_whose_header_nests_a_group_completes(settings: Settings) -> None:
    """A nested header makes Celery save the group and join its parts' results through
    ``get_many``: read from the parts' records."""
    _redis_backend(settings)
    app = _plain_client(settings)
    try:
        count = app.signature("native.countdown")
        total = app.signature("native.total")
        header = [
            group(
                count.clone(kwargs={"n": 1, "delay": 0}), count.clone(kwargs={"n": 2, "delay": 0})
            ),
            count.clone(kwargs={"n": 3, "delay": 0}),
        ]
        flat = chord([count.clone(kwargs={"n": n, "delay": 0}) for n in (4, 5)], total)
        nested = chord(header, total)
        assert nested.apply_async().get(timeout=30) == 6
        assert flat.apply_async().get(timeout=30) == 9
    finally:
        app.close()


@pytest.fixture(scope="module")
def keeping(valkey: EmbeddedValkey, data_dir: Path) -> Iterator[Settings]:
    """A worker with ``JOBQL_CELERY_RESULTS=all`` (in a database of its own): Celery's keys
    are kept, progress included, for tools that read them."""
    here = data_dir / "results-all"
    url = valkey.url.rsplit("/", 1)[0] + "/4"
    env = service_env(url, here, JOBQL_CELERY_RESULTS="all")
    settings = Settings(redis_url=url, celery_results="all")
    with running_worker(env, here, settings):
        yield settings


def test_with_all_celerys_keys_are_kept_progress_included(keeping: Settings) -> None:
    stock = Celery("stock", broker=keeping.broker, backend=keeping.result_backend)
    stock.conf.update(task_default_queue=keeping.default_queue)
    try:
        sent = stock.send_task("native.countdown", kwargs={"n": 4, "delay": 0.4})
        seen = set()
        deadline = time.monotonic() + 20
        while not sent.ready() and time.monotonic() < deadline:
            seen.add(sent.state)
            time.sleep(0.05)
        assert "PROGRESS" in seen, seen
        assert sent.get(timeout=5) == {"counted": 4}
        assert _key(keeping, sent.id) is not None, "stock Celery's backend reads its own key"
    finally:
        stock.close()


def test_a_finished_jobs_memory_is_its_record(api: GraphQL, settings: Settings) -> None:
    """MEMORY USAGE of what a finished job leaves (its record, no Celery entry) against the
    entry stock Celery leaves for the same task (measured, not assumed)."""
    _redis_backend(settings)
    done = api.wait_done(api.data(PROCESS)["processData"]["id"])
    client = redis.Redis.from_url(settings.result_backend)
    try:
        record = client.memory_usage(records.job_key(done["id"])) or 0
        assert client.memory_usage(META + done["id"]) is None
    finally:
        client.close()
    assert 0 < record < 1_000, record


def test_a_late_outcome_never_overwrites_a_success_in_the_record(tmp_path: Path) -> None:
    """Celery's rule where the success is only in the record: a late failure or revocation
    (stored by Celery's own path, as the worker's main process stores one) is not written,
    and AsyncResult still reads the success."""
    server = EmbeddedValkey(tmp_path / "valkey", persist=False).start()
    app = worker_app(Settings(redis_url=server.url))
    client = redis.Redis.from_url(server.url)
    try:
        job_id = str(uuid.uuid4())
        client.hset(
            records.job_key(job_id),
            mapping={"state": "SUCCESS", "task": "process_data", "result": '{"n":1}'},
        )
        app.backend.mark_as_failure(job_id, RuntimeError("late"))
        app.backend.mark_as_revoked(job_id, "late")
        assert client.get(META + job_id) is None
        result = app.AsyncResult(job_id)
        assert (result.state, result.result) == ("SUCCESS", {"n": 1})
        # Without a record, Celery's own store as before.
        other = str(uuid.uuid4())
        app.backend.mark_as_failure(other, RuntimeError("no record"))
        assert app.AsyncResult(other).state == "FAILURE" and client.get(META + other)
    finally:
        client.close()
        app.close()
        server.stop()
