"""`make run`: the example project and everything it needs; one Ctrl-C stops all of it.

Valkey (embedded, unless ``REDIS_URL`` is set), the PostgreSQL database (created when
missing) and its migrations, a Celery worker (``celery -A exampleproject worker``), beat
for the periodic schedules (``celery -A exampleproject beat``: JobQL's scheduler on
django-celery-beat's models, as ``JOBQL_SCHEDULE_STORE=django`` configures) and uvicorn serving
``exampleproject.asgi:application``: Django and JobQL on one port.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import psycopg
from psycopg import sql

from devtools.processes import stop_all, wait_for_port
from devtools.valkey import EmbeddedValkey

HERE = Path(__file__).resolve().parent
logger = logging.getLogger("example")


def ensure_database(name: str) -> None:
    """Create the project's database on the PostgreSQL the settings name, if missing."""
    with psycopg.connect(
        host=os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
        port=int(os.environ.get("DJANGO_DB_PORT", "5432")),
        user=os.environ.get("DJANGO_DB_USER", "postgres"),
        password=os.environ.get("DJANGO_DB_PASSWORD", ""),
        dbname="postgres",
        autocommit=True,
    ) as admin:
        found = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            logger.info("created the database %s", name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    env = dict(os.environ, DJANGO_DEBUG=os.environ.get("DJANGO_DEBUG", "1"))
    if "DJANGO_SECRET_KEY" not in env:
        env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(40)
        logger.info("DJANGO_SECRET_KEY unset: a throwaway one for this run (sessions end with it)")
    valkey = None
    if not (env.get("REDIS_URL") or env.get("JOBQL_REDIS_URL")):
        valkey = EmbeddedValkey(HERE / "var" / "valkey").start()
        env["JOBQL_REDIS_URL"] = valkey.url
        logger.info("embedded Valkey on %s", valkey.url)
    ensure_database(env.get("DJANGO_DB_NAME", "jobql_example"))
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity=1"], env=env, check=True)

    stopping = False

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    celery = [sys.executable, "-m", "celery", "-A", "exampleproject"]
    server_argv = [
        sys.executable, "-m", "uvicorn", "exampleproject.asgi:application",
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    children = [
        subprocess.Popen([*celery, "worker", "-l", "INFO"], env=env),
        subprocess.Popen([*celery, "beat", "-l", "INFO"], env=env),
        subprocess.Popen(server_argv, env=env),
    ]
    try:
        wait_for_port(args.port, 60.0, children[-1])
        logger.info(
            "up: http://%s:%d/ (create a user with `python manage.py createsuperuser`, sign in "
            "at /accounts/login/, then GraphiQL at /graphql)",
            args.host,
            args.port,
        )
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        logger.info("stopping")
        stop_all(children)
        if valkey is not None:
            valkey.stop()
    return 0 if stopping else 1


if __name__ == "__main__":
    raise SystemExit(main())
