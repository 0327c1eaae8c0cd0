"""The machine's RabbitMQ and PostgreSQL for the tests, each test session in its own space.

RabbitMQ: a virtual host per session (``rabbitmqctl``; AMQP cannot make one), so queues
named ``jobql`` never meet another run's messages or another run's queue arguments.
PostgreSQL: a database per session, dropped at the end. Each is skipped, with the reason,
where the server (or the means to isolate a session in it) is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator

RABBITMQ = ("127.0.0.1", 5672)
POSTGRES = ("127.0.0.1", 5432)


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "--quiet", *args], capture_output=True, text=True, timeout=60, check=False
    )


def rabbitmq_unavailable() -> str | None:
    """Why the RabbitMQ tests cannot run here, or None."""
    if not reachable(RABBITMQ):
        return "no RabbitMQ on 127.0.0.1:5672"
    if shutil.which("rabbitmqctl") is None:
        return "no rabbitmqctl to give the test session a virtual host of its own"
    return None


@contextlib.contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """An AMQP URL to a fresh virtual host (RabbitMQ's stock development user), then gone."""
    vhost = f"jobql-test-{uuid.uuid4().hex[:10]}"
    made = _rabbitmqctl("add_vhost", vhost)
    if made.returncode != 0:
        raise RuntimeError(f"rabbitmqctl add_vhost failed: {made.stderr.strip()}")
    try:
        allowed = _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        if allowed.returncode != 0:
            raise RuntimeError(f"rabbitmqctl set_permissions failed: {allowed.stderr.strip()}")
        # No credentials in the URL: kombu logs in as RabbitMQ's stock development user.
        yield f"amqp://{RABBITMQ[0]}:{RABBITMQ[1]}/{vhost}"
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def postgres_unavailable() -> str | None:
    if not reachable(POSTGRES):
        return "no PostgreSQL on 127.0.0.1:5432"
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        return f"the postgres extra is not installed ({exc})"
    return None


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A SQLAlchemy URL to a new, empty database (trust auth as the local user), dropped after."""
    import psycopg

    user = os.environ.get("PGUSER", "postgres")
    name = f"jobql_test_{uuid.uuid4().hex[:10]}"
    admin = f"host={POSTGRES[0]} port={POSTGRES[1]} user={user} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{POSTGRES[0]}:{POSTGRES[1]}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
