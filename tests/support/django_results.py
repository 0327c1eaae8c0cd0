"""A PostgreSQL database for a run whose workers keep Celery's results in django-celery-results.

`make test` runs the contract tests again so (``JOBQL_RESULT_BACKEND_URL=django-db``, the
Django example's settings): the workers store every result in its ``TaskResult`` table while
``job``, ``jobs`` and the subscriptions must answer exactly as with Redis.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """Create and migrate a database for this run (skip without PostgreSQL); drop it after."""
    import psycopg
    from psycopg import sql

    name = f"jobql_results_test_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(
            host=os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
            port=int(os.environ.get("DJANGO_DB_PORT", "5432")),
            user=os.environ.get("DJANGO_DB_USER", "postgres"),
            password=os.environ.get("DJANGO_DB_PASSWORD", ""),
            dbname="postgres",
            connect_timeout=3,
            autocommit=True,
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"results in django-celery-results need a PostgreSQL: {exc}")
    # Read by the Django settings of every worker this run starts; made for this run only.
    os.environ["DJANGO_DB_NAME"] = name
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(40))
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        subprocess.run(
            [sys.executable, "-m", "django", "migrate", "django_celery_results", "--verbosity=0"],
            check=True,
            env={**os.environ, "JOBQL_REDIS_URL": "redis://unused"},
        )
        yield name
    finally:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()
