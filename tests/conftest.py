"""Real services for the tests: an embedded Valkey, a Celery worker and uvicorn, per session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.processes import api_command, free_port, stop_all, wait_for_port, worker_command
from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.support.ledger import (  # noqa: F401  (the fault ledger and its hooks)
    ledger,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
)
from tests.support.servers import (
    postgres_database,
    postgres_unavailable,
    rabbitmq_unavailable,
    rabbitmq_vhost,
)

ROOT = Path(__file__).resolve().parent.parent


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Ids that hold no clock or randomness: every pytest-xdist worker collects on its own,
    and all must name the same tests (a token minted with ``time.time()`` in a parameter
    once split them). Long strings (tokens, bodies) are named by their argument."""
    if isinstance(val, str) and len(val) > 40:
        return argname
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test under ``tests/live`` or ``tests/faults``, or one that needs the session's worker
    (the ``api`` fixture does), is a slow one; the in-process tests mirror the packages
    (``tests/gql/...``, ``tests/tasks/...``) and the repository's own files (``tests/project``).

    Tests elsewhere that start their own processes say so with ``pytest.mark.slow``.
    """
    apart = (ROOT / "tests" / "live", ROOT / "tests" / "faults")
    for item in items:
        live = any(item.path.is_relative_to(folder) for folder in apart)
        if live or "worker" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


JOB_FIELDS = """
id task state done sequence retries queue input result createdAt startedAt finishedAt
progress { current total percent message data }
error { type message }
"""
JOB = f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"


def _request(query: str, variables: dict[str, Any] | None) -> dict[str, Any]:
    return {"query": query, "variables": variables or {}}


def _body(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def _data(body: dict[str, Any]) -> dict[str, Any]:
    assert "errors" not in body, body["errors"]
    return body["data"]


def _error(body: dict[str, Any]) -> dict[str, Any]:
    assert body.get("errors"), body
    return body["errors"][0]


class GraphQL:
    """A GraphQL client over real HTTP, as a frontend would call the API."""

    def __init__(self, base_url: str, process: subprocess.Popen[bytes] | None = None) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=30)
        self.process = process  # the API's process, when a test started it

    def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _body(self.http.post("/graphql", json=_request(query, variables)))

    def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _data(self.post(query, variables))

    def error(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _error(self.post(query, variables))

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.data(JOB, {"id": job_id})["job"]

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


class AsyncGraphQL:
    """The same client on httpx's async client, for tests that query while they watch."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.http = httpx.AsyncClient(base_url=base_url, timeout=30)

    async def __aenter__(self) -> AsyncGraphQL:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.http.aclose()

    async def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _body(await self.http.post("/graphql", json=_request(query, variables)))

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _data(await self.post(query, variables))

    async def error(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        return _error(await self.post(query, variables))

    async def job(self, job_id: str) -> dict[str, Any] | None:
        return (await self.data(JOB, {"id": job_id}))["job"]

    async def wait(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], within: float = 30
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        job = None
        while time.monotonic() < deadline:
            job = await self.job(job_id)
            if job is not None and until(job):
                return job
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached the expected state; last seen {job}")

    async def wait_done(self, job_id: str, within: float = 30) -> dict[str, Any]:
        return await self.wait(job_id, lambda job: job["done"], within)


# The webhook signing secret of this test run: generated now, never written to a file.
WEBHOOK_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()

# Settings from the developer's environment that reach the test services: a run with
# JOBQL_FAST_PATHS=false checks the stock paths end to end, one with
# JOBQL_RESULT_BACKEND_URL=django-db the contract with Celery's results in
# django-celery-results (`make test` runs both). Every other JOBQL_ is the test's.
PASSED_THROUGH = ("JOBQL_FAST_PATHS", "JOBQL_FAST_PATHS_OFF", "JOBQL_RESULT_BACKEND_URL")

# Another broker or result backend under the same tests (the Makefile's RABBITMQ_TESTS and
# POSTGRES_TESTS passes): JOBQL_TEST_BROKER=rabbitmq, JOBQL_TEST_RESULTS=postgres. The
# session fixture ``backing`` fills this in; every service the tests start gets it.
BACKING: dict[str, str] = {}
# On RabbitMQ, each Redis the tests start gets a virtual host of its own, as each has its
# own queues on Redis: a module's stack must not take the session worker's messages.
_VHOSTS: dict[str, str] = {}
_SESSION = contextlib.ExitStack()


def broker_for(redis_url: str) -> str | None:
    """The broker of the services that keep their records in ``redis_url`` (None: Redis)."""
    if os.environ.get("JOBQL_TEST_BROKER") != "rabbitmq":
        return None
    if redis_url not in _VHOSTS:
        _VHOSTS[redis_url] = _SESSION.enter_context(rabbitmq_vhost())
    return _VHOSTS[redis_url]


def service_env(redis_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (not k.startswith("JOBQL_") or k in PASSED_THROUGH) and k != "REDIS_URL"
    }
    env.update(
        # The project first; then what the run adds (the Django example's project).
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        JOBQL_ENV="test",
        JOBQL_REDIS_URL=redis_url,
        JOBQL_TASK_MODULES='["tasks.examples", "tests.support.native_tasks"]',
        JOBQL_EXTRA_QUEUES='["reports"]',
        JOBQL_DATA_DIR=str(data_dir),
        # Webhooks: the test's receivers listen on loopback, refused outside the tests
        # (::1 too: a receiver named localhost may resolve to both).
        JOBQL_WEBHOOK_SECRET=WEBHOOK_SECRET,
        JOBQL_WEBHOOK_ALLOWED_NETWORKS='["127.0.0.0/8", "::1/128"]',
        JOBQL_WEBHOOK_BACKOFF="0.2",
    )
    # `JOBQL_FAST_PATHS=false make test` runs the services on the libraries' stock behaviour.
    env.update({k: v for k, v in os.environ.items() if k in PASSED_THROUGH})
    env.update(BACKING)
    if broker := broker_for(redis_url):
        env["JOBQL_BROKER_URL"] = broker
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
        client = GraphQL(f"http://127.0.0.1:{port}", process)
        yield client
        client.http.close()
    finally:
        stop_all([process], timeout=10)


@contextlib.contextmanager
def running_worker(
    env: dict[str, str],
    data_dir: Path,
    settings: Settings,
    queues: tuple[str, ...] = (),
    concurrency: int = 2,
    name: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A real Celery worker (prefork, two processes by default), ready once it answers a ping.

    Without ``queues`` it consumes what the settings configure, as production starts it.
    Each worker gets a name of its own unless ``name`` gives one (a restart under an old name).
    """
    name = name or f"worker-{free_port()}"
    with _log(data_dir, name) as log:
        process = subprocess.Popen(
            [*worker_command(queues, concurrency=concurrency), "--hostname", f"{name}@%h"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    # The worker's broker is the one its environment names (a RabbitMQ pass sets it there).
    if broker := env.get("JOBQL_BROKER_URL"):
        settings = settings.model_copy(update={"broker_url": broker})
    control = create_celery_app(settings, producer=True)
    try:
        deadline = time.monotonic() + 60
        while not control.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5):
            assert process.poll() is None, (data_dir / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "the worker did not start"
    except BaseException:
        stop_all([process], timeout=30)  # a worker that never answered is not left running
        raise
    finally:
        control.close()
    try:
        yield process
    finally:
        stop_all([process], timeout=30)


@pytest.fixture(scope="session", autouse=True)
def django_results() -> Iterator[None]:
    """With ``JOBQL_RESULT_BACKEND_URL=django-db``: a throwaway PostgreSQL database with
    django-celery-results' tables, which the workers' Django settings point at."""
    if os.environ.get("JOBQL_RESULT_BACKEND_URL") != "django-db":
        yield
        return
    from tests.support.django_results import throwaway_database

    with throwaway_database():
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobql")


@pytest.fixture(scope="session", autouse=True)
def backing() -> Iterator[dict[str, str]]:
    """The broker and result backend of this session: Valkey, unless the run asks otherwise."""
    with _SESSION as stack:
        if os.environ.get("JOBQL_TEST_BROKER") == "rabbitmq" and (reason := rabbitmq_unavailable()):
            pytest.skip(f"{reason}; the RabbitMQ pass is skipped")
        if os.environ.get("JOBQL_TEST_RESULTS") == "postgres":
            if reason := postgres_unavailable():
                pytest.skip(f"{reason}; the PostgreSQL results pass is skipped")
            url = stack.enter_context(postgres_database())
            BACKING["JOBQL_RESULT_BACKEND_URL"] = f"db+{url}"
        yield BACKING
        BACKING.clear()
        _VHOSTS.clear()


@pytest.fixture(scope="session")
def valkey(data_dir: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(data_dir / "valkey").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def env(valkey: EmbeddedValkey, data_dir: Path, backing: dict[str, str]) -> dict[str, str]:
    return service_env(valkey.url, data_dir)


@pytest.fixture(scope="session")
def settings(valkey: EmbeddedValkey, data_dir: Path, backing: dict[str, str]) -> Settings:
    return Settings(
        redis_url=valkey.url,
        broker_url=broker_for(valkey.url),
        # The PostgreSQL pass's database, or the one passed through (django-db).
        result_backend_url=backing.get("JOBQL_RESULT_BACKEND_URL")
        or os.environ.get("JOBQL_RESULT_BACKEND_URL"),
        data_dir=data_dir,
        extra_queues=("reports",),
        env="test",
    )


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


@pytest.fixture
async def async_api(api: GraphQL) -> AsyncIterator[AsyncGraphQL]:
    """The session's API, through a client on this test's event loop."""
    async with AsyncGraphQL(api.base_url) as client:
        yield client


@pytest.fixture(scope="session")
def outbox(data_dir: Path) -> Path:
    return data_dir / "outbox"
