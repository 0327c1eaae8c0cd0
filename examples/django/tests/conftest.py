"""The example project against real services: PostgreSQL, Valkey, a Celery worker, uvicorn.

Each run makes a throwaway database on the PostgreSQL at 127.0.0.1:5432 (``DJANGO_DB_*``
move it) and drops it at the end; without a PostgreSQL every test skips and says why.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

EXAMPLE = Path(__file__).resolve().parent.parent
ROOT = EXAMPLE.parent.parent

# The project's settings read these; they are made now, for this run only.
os.environ.update(
    DJANGO_SETTINGS_MODULE="exampleproject.settings",
    DJANGO_SECRET_KEY=secrets.token_urlsafe(40),
    DJANGO_DB_NAME=f"jobql_example_test_{secrets.token_hex(4)}",
    DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
    JOBQL_ENV="test",
    JOBQL_RESULT_BACKEND_URL="django-db",
    JOBQL_TASK_MODULES="[]",
    # Schedules in django-celery-beat's tables; few per user, so the cap is seen at work.
    JOBQL_SCHEDULE_STORE="django",
    JOBQL_MAX_SCHEDULES_PER_OWNER="3",
    # A logged-out session's sockets close within this (test_django_example.py).
    JOBQL_SESSION_RECHECK_SECONDS="0.5",
)

from devtools.processes import free_port, stop_all, wait_for_port  # noqa: E402
from tasks.core.app import create_celery_app  # noqa: E402
from tasks.core.settings import Settings, get_settings  # noqa: E402
from tests import conftest as jobql_conftest  # noqa: E402
from tests.conftest import GraphQL  # noqa: E402
from tests.support.ledger import (  # noqa: E402, F401  (the fault ledger and its hooks)
    ledger,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
)

# JobQL's own fixtures: a session's data directory and its embedded Valkey.
data_dir = jobql_conftest.data_dir
valkey = jobql_conftest.valkey


def _admin() -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
        port=int(os.environ.get("DJANGO_DB_PORT", "5432")),
        user=os.environ.get("DJANGO_DB_USER", "postgres"),
        password=os.environ.get("DJANGO_DB_PASSWORD", ""),
        dbname="postgres",
        connect_timeout=3,
        autocommit=True,
    )


@pytest.fixture(scope="session")
def database() -> Iterator[str]:
    """A new, migrated database for this run; dropped afterwards."""
    try:
        admin = _admin()
    except psycopg.OperationalError as exc:
        pytest.skip(f"the Django example needs a PostgreSQL (DJANGO_DB_HOST/PORT): {exc}")
    name = os.environ["DJANGO_DB_NAME"]
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0, interactive=False)
        yield name
    finally:
        from django.db import connections

        connections.close_all()
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="session")
def env(valkey: Any, data_dir: Path, database: str) -> dict[str, str]:
    """The environment of the project's processes, and of this one (enqueue_on_commit)."""
    os.environ.update(JOBQL_REDIS_URL=valkey.url, JOBQL_DATA_DIR=str(data_dir))
    get_settings.cache_clear()
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(ROOT)])}


def _log(data_dir: Path, name: str) -> Any:
    return (data_dir / f"{name}.log").open("ab")


@pytest.fixture(scope="session")
def worker(env: dict[str, str], data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A exampleproject worker``: the project's app, tasks autodiscovered."""
    name = f"django-worker-{free_port()}"
    command = [
        sys.executable, "-m", "celery", "-A", "exampleproject", "worker", "--loglevel=INFO",
        "--concurrency", "2", "--hostname", f"{name}@%h",
    ]  # fmt: skip
    with _log(data_dir, name) as log:
        process = subprocess.Popen(command, env=env, cwd=EXAMPLE, stdout=log, stderr=log)
    control = create_celery_app(Settings(redis_url=env["JOBQL_REDIS_URL"]), producer=True)
    try:
        deadline = time.monotonic() + 60
        while not control.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.5):
            assert process.poll() is None, (data_dir / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "the worker did not start"
    finally:
        control.close()
    yield process
    stop_all([process], timeout=30)


@pytest.fixture(scope="module")
def beat(env: dict[str, str], data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A exampleproject beat``: JobQL's scheduler on django-celery-beat's models,
    checking them for changes every 0.2 s; for one module, so no other meets it."""
    command = [sys.executable, "-m", "celery", "-A", "exampleproject", "beat", "--loglevel=INFO"]
    with _log(data_dir, f"django-beat-{free_port()}") as log:
        process = subprocess.Popen(
            command, env={**env, "JOBQL_BEAT_INTERVAL": "0.2"}, cwd=EXAMPLE, stdout=log, stderr=log
        )
    yield process
    stop_all([process], timeout=10)


@pytest.fixture(scope="session")
def server(
    env: dict[str, str],
    data_dir: Path,
    worker: subprocess.Popen[bytes],
) -> Iterator[str]:
    """uvicorn serving ``exampleproject.asgi:application``: Django and JobQL on one port."""
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "exampleproject.asgi:application",
        "--host", "127.0.0.1", "--port", str(port), "--lifespan", "on",
    ]  # fmt: skip
    with _log(data_dir, f"django-api-{port}") as log:
        process = subprocess.Popen(command, env=env, cwd=EXAMPLE, stdout=log, stderr=log)
    try:
        wait_for_port(port, 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_all([process], timeout=10)


def session_cookie(username: str, *, superuser: bool = False) -> str:
    """A Django user signed in as Django signs users in: a session row, its cookie."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    model = get_user_model()
    user = model.objects.create_user(username, password=secrets.token_urlsafe(16))
    if superuser:
        user.is_superuser = user.is_staff = True
        user.save()
    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def user_client(server: str, username: str, **options: Any) -> GraphQL:
    client = GraphQL(server)
    client.http.headers["cookie"] = session_cookie(username, **options)
    return client


@pytest.fixture
def alice(server: str, request: pytest.FixtureRequest) -> Iterator[GraphQL]:
    client = user_client(server, f"alice-{secrets.token_hex(3)}")
    yield client
    client.http.close()


@pytest.fixture
def bob(server: str) -> Iterator[GraphQL]:
    client = user_client(server, f"bob-{secrets.token_hex(3)}")
    yield client
    client.http.close()
