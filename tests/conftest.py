"""Real services for the tests: an embedded Valkey, a Celery worker and uvicorn, per session."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gql.devserver import (
    EmbeddedValkey,
    api_command,
    free_port,
    stop_all,
    wait_for_port,
    worker_command,
)
from tasks.app import create_celery_app
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
QUEUES = ("jobql", "reports")


class GraphQL:
    """A GraphQL client over real HTTP, as a frontend would call the API."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)

    def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.http.post("/graphql", json={"query": query, "variables": variables or {}})
        assert response.status_code == 200, response.text
        return response.json()

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.post(query, variables)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def error(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = self.post(query, variables)
        assert body.get("errors"), body
        return body["errors"][0]

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.data(f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}", {"id": job_id})[
            "job"
        ]

    def wait(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], timeout: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = None
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job is not None and until(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached the expected state; last seen {job}")

    def wait_done(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        return self.wait(job_id, lambda job: job["done"], timeout)

    def newest_job_id(self) -> str | None:
        nodes = self.data("{ jobs(first: 1) { nodes { id } } }")["jobs"]["nodes"]
        return nodes[0]["id"] if nodes else None


JOB_FIELDS = """
id task state done sequence retries queue input result createdAt startedAt finishedAt
progress { current total percent message data }
error { type message }
"""


def service_env(redis_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_") and k != "REDIS_URL"}
    # `make test` runs the suite again with fast paths off: the services must see the switch.
    env.update({k: v for k, v in os.environ.items() if k == "JOBQL_FAST_PATHS"})
    env.update(
        PYTHONPATH=str(ROOT),
        JOBQL_ENV="test",
        JOBQL_REDIS_URL=redis_url,
        JOBQL_TASK_MODULES='["tasks.examples", "tests.native_tasks"]',
        JOBQL_EXTRA_QUEUES='["reports"]',
        JOBQL_DATA_DIR=str(data_dir),
    )
    env.update(overrides)
    return env


def _log(data_dir: Path, name: str) -> Any:
    data_dir.mkdir(parents=True, exist_ok=True)
    return (data_dir / f"{name}.log").open("ab")


@contextlib.contextmanager
def running_api(env: dict[str, str], data_dir: Path) -> Iterator[GraphQL]:
    """A uvicorn server with the API, started the way production starts it."""
    port = free_port()
    with _log(data_dir, f"api-{port}") as log:
        process = subprocess.Popen(
            api_command("127.0.0.1", port), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_port(port, 30, process)
        client = GraphQL(f"http://127.0.0.1:{port}")
        yield client
        client.http.close()
    finally:
        stop_all([process], timeout=10)


@contextlib.contextmanager
def running_worker(
    env: dict[str, str],
    data_dir: Path,
    settings: Settings,
    queues: tuple[str, ...] = QUEUES,
    extra_args: tuple[str, ...] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker (prefork, two processes), ready once it answers a ping."""
    name = f"worker-{free_port()}"
    with _log(data_dir, name) as log:
        process = subprocess.Popen(
            [*worker_command(queues, concurrency=2), "--hostname", f"{name}@%h", *extra_args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    control = create_celery_app(settings, producer=True)
    try:
        deadline = time.monotonic() + 60
        while not control.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5):
            assert process.poll() is None, (data_dir / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "the worker did not start"
    finally:
        control.close()
    try:
        yield process
    finally:
        stop_all([process], timeout=30)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobql")


@pytest.fixture(scope="session")
def valkey(data_dir: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(data_dir / "valkey").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def env(valkey: EmbeddedValkey, data_dir: Path) -> dict[str, str]:
    return service_env(valkey.url, data_dir)


@pytest.fixture(scope="session")
def settings(valkey: EmbeddedValkey, data_dir: Path) -> Settings:
    return Settings(redis_url=valkey.url, data_dir=data_dir, extra_queues=("reports",), env="test")


@pytest.fixture(scope="session")
def worker(
    env: dict[str, str], data_dir: Path, settings: Settings
) -> Iterator[subprocess.Popen[bytes]]:
    with running_worker(env, data_dir, settings) as process:
        yield process


@pytest.fixture(scope="session")
def api(env: dict[str, str], data_dir: Path, worker: subprocess.Popen[bytes]) -> Iterator[GraphQL]:
    with running_api(env, data_dir) as client:
        yield client


@pytest.fixture(scope="session")
def outbox(data_dir: Path) -> Path:
    return data_dir / "outbox"
