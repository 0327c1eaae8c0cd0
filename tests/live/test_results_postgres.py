"""Results in PostgreSQL (Celery's database backend), against the machine's real server.

The job records stay in Redis; what PostgreSQL holds is Celery's own copy of each outcome,
with ``result_extended`` metadata, deleted by the worker once expired (no beat needed).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import ROOT, GraphQL, running_api, running_worker, service_env
from tests.support.servers import postgres_database, postgres_unavailable

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        postgres_unavailable() is not None,
        reason=f"{postgres_unavailable()}; PostgreSQL result tests skipped",
    ),
]

RETENTION = 3600


@pytest.fixture(scope="module")
def stack(
    valkey: EmbeddedValkey, data_dir: Path
) -> Iterator[tuple[GraphQL, Settings, sqlalchemy.Engine]]:
    here = data_dir / "postgres"
    with postgres_database() as url:
        redis_url = valkey.url.rsplit("/", 1)[0] + "/4"
        env = service_env(
            redis_url,
            here,
            JOBQL_RESULT_BACKEND_URL=f"db+{url}",
            JOBQL_JOB_RETENTION_SECONDS=str(RETENTION),
            JOBQL_RESULT_CLEANUP_INTERVAL="0.5",
        )
        settings = Settings(
            redis_url=redis_url,
            result_backend_url=f"db+{url}",
            job_retention_seconds=RETENTION,
            extra_queues=("reports",),
        )
        engine = sqlalchemy.create_engine(url)
        try:
            with running_worker(env, here, settings), running_api(env, here) as client:
                yield client, settings, engine
        finally:
            engine.dispose()


def _row(engine: sqlalchemy.Engine, job_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            sqlalchemy.text("SELECT * FROM celery_taskmeta WHERE task_id = :id"), {"id": job_id}
        ).mappings().first()  # fmt: skip
    return dict(row) if row else None


def _run(api: GraphQL, data: object) -> dict[str, Any]:
    job = api.data(
        "mutation($d: JSON!) { processData(input: {data: $d, delay: 0}) { id } }", {"d": data}
    )["processData"]
    return api.wait_done(job["id"])


def test_a_job_s_outcome_is_a_row_with_extended_metadata(
    stack: tuple[GraphQL, Settings, sqlalchemy.Engine],
) -> None:
    api, settings, engine = stack
    job = _run(api, {"a": 1})

    assert job["state"] == "SUCCESS" and job["result"]["processed"] == {"a": 1}
    row = _row(engine, job["id"])
    assert row is not None
    assert row["status"] == "SUCCESS"
    assert row["name"] == "process_data" and row["queue"] == "jobql"
    assert row["worker"], "result_extended: the worker that ran it"
    assert bytes(row["result"]).startswith(b'{"processed"'), "JSON, never a pickle"
    app = create_celery_app(settings, producer=True, canvas=True)
    try:
        meta = app.backend.get_task_meta(job["id"])
    finally:
        app.close()
    assert meta["result"] == {"processed": {"a": 1}, "status": "complete"}
    assert meta["kwargs"] == {"data": {"a": 1}, "delay": 0.0}


def test_the_worker_deletes_expired_rows_without_beat(
    stack: tuple[GraphQL, Settings, sqlalchemy.Engine],
) -> None:
    api, _, engine = stack
    old, fresh = _run(api, "old"), _run(api, "fresh")
    with engine.begin() as connection:  # finished longer ago than the retention
        connection.execute(
            sqlalchemy.text(
                "UPDATE celery_taskmeta SET date_done = now() - make_interval(secs => :s) "
                "WHERE task_id = :id"
            ),
            {"s": RETENTION + 60, "id": old["id"]},
        )

    deadline = time.monotonic() + 10
    while _row(engine, old["id"]) is not None:
        assert time.monotonic() < deadline, "the expired row is still there"
        time.sleep(0.2)
    assert _row(engine, fresh["id"]) is not None, "a row within the retention stays"


def test_a_chord_runs_with_results_in_postgres(
    stack: tuple[GraphQL, Settings, sqlalchemy.Engine],
) -> None:
    """The database backend counts a chord's parts by polling (celery.chord_unlock), a task
    of Celery's own that is not listed as a job."""
    api, _, _ = stack
    started = api.data(
        'mutation { runWorkflow(input: { name: "fan", root: { chord: { group: ['
        '{ task: { name: "process_data", input: { data: 1, delay: 0 } } },'
        '{ task: { name: "process_data", input: { data: 2, delay: 0 } } }],'
        ' then: { name: "summarize", resultTo: "results" } } } }) { id } }'
    )["runWorkflow"]
    query = "query($id: ID!) { workflow(id: $id) { state done } }"
    deadline = time.monotonic() + 30
    while not (workflow := api.data(query, {"id": started["id"]})["workflow"])["done"]:
        assert time.monotonic() < deadline, workflow
        time.sleep(0.1)

    assert workflow["state"] == "SUCCESS"
    tasks = {
        n["task"] for n in api.data("{ jobs(first: 100) { nodes { task } } }")["jobs"]["nodes"]
    }
    assert not any(name.startswith("celery.") for name in tasks), tasks


def test_a_pickled_row_is_refused_not_unpickled(
    stack: tuple[GraphQL, Settings, sqlalchemy.Engine],
) -> None:
    """Celery 5.7 unpickles an undecodable row that starts like a pickle; JobQL does not."""
    _, settings, engine = stack
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO celery_taskmeta (id, task_id, status, result, date_done) "
                "VALUES (nextval('task_id_sequence'), 'forged', 'SUCCESS', :r, now())"
            ),
            {"r": pickle.dumps({"forged": True})},
        )
    app = create_celery_app(settings, producer=True, canvas=True)
    try:
        with pytest.raises(Exception, match=r"[Cc]ontent|[Dd]isallowed|[Dd]ecode|JSON"):
            app.backend.get_task_meta("forged")
    finally:
        app.close()


def test_jobql_check_reaches_the_database(
    stack: tuple[GraphQL, Settings, sqlalchemy.Engine], tmp_path: Path
) -> None:
    _, settings, _ = stack
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JOBQL_ENV": "test",
           "JOBQL_REDIS_URL": settings.redis,
           "JOBQL_RESULT_BACKEND_URL": settings.result_backend}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "gql.cli", "check"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert "ok    result backend at db+postgresql+psycopg://127.0.0.1:5432/" in result.stdout, (
        result.stdout
    )
