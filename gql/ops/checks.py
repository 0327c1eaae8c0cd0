"""``jobql check``: what the configuration says and whether what it names answers, one line per
check (``ok``, ``warn``, or ``FAIL`` with what to do), URLs shown without their credentials; the
exit status is 1 if any check failed, so a deploy script can stop on it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

import redis
from pydantic import ValidationError

from tasks.core import rabbitmq, records, redis_clients
from tasks.core.durability import durability_warnings
from tasks.core.liveness import worker_key
from tasks.core.refusals import WRITE_PROBE_KEY, WRITE_PROBE_MS, write_refusal
from tasks.core.result_backends import is_database
from tasks.core.schedules import DJANGO_LOCK_KEY, LOCK_KEY
from tasks.core.settings import Settings


def _safe(url: str) -> str:
    """A URL without user and password, for messages (each address of a Sentinel URL)."""
    shown = []
    for chunk in url.split(";"):
        parts = urlsplit(chunk)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        shown.append(f"{parts.scheme}://{host}{port}{parts.path}")
    return ";".join(shown)


def _say(ok: bool, what: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'}  {what}")  # noqa: T201


def _warn(what: str) -> None:
    print(f"warn  {what}")  # noqa: T201


def load_settings() -> Settings | None:
    """The settings, with the embedded Valkey of a running `make run` when no Redis is
    configured; None (having said why) when they name no Redis or are refused."""
    try:
        settings = Settings()
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            _say(False, f"{where}: {error['msg']} (see .env.example)")
        return None
    if not settings.redis_url:
        running = settings.data_dir / "dev.env"  # written by `make run` while it runs
        if running.is_file():
            settings = Settings(_env_file=(".env", running))
            _say(True, f"using the embedded Valkey of `make run` ({running})")
    if not settings.redis_url:
        _say(False, "no Redis configured: set JOBQL_REDIS_URL or REDIS_URL, or start `make run`")
        return None
    return settings


def run_checks(*, worker: str | None = None, beat: bool = False) -> int:
    settings = load_settings()
    if settings is None:
        return 1
    failures = 0

    def check(what: str, probe: Callable[[], object], hint: str) -> None:
        nonlocal failures
        try:
            probe()
        except Exception as exc:
            failures += 1
            _say(False, f"{what}: {write_refusal(exc) or f'{type(exc).__name__}: {exc}'}. {hint}")
        else:
            _say(True, what)

    for module in settings.task_modules:
        check(f"task module {module} imports", _importer(module),
              "Fix JOBQL_TASK_MODULES or the module.")  # fmt: skip

    def ping(url: str) -> Callable[[], object]:
        def probe() -> object:
            client = redis_clients.sync_client(url, settings, decode=False)
            try:
                return client.ping()
            finally:
                redis_clients.close(client)

        return probe

    failed_before = failures
    check(f"Redis for job records at {_safe(settings.redis)} answers", ping(settings.redis),
          "Is it running and is JOBQL_REDIS_URL right?")  # fmt: skip
    _durability(settings.redis, settings)
    if settings.records != settings.redis or settings.records_cluster:
        check(f"job records at {_safe(settings.records)} answer", lambda: _records(settings).ping(),
              "Is JOBQL_RECORDS_URL right (and JOBQL_RECORDS_CLUSTER for a cluster)?")  # fmt: skip
    if settings.records_cluster and not redis_clients.cluster_seeds(settings.records)[1]:
        _warn("JOBQL_RECORDS_URL names one node of the cluster: a process started while it "
              "is down cannot find the others; name several, ';'-separated")  # fmt: skip
    if failures == failed_before:
        # PING works while Redis refuses every write (maxmemory, a disk it cannot save to).
        check(f"job records at {_safe(settings.records)} take writes", lambda: _write(settings),
              WRITE_HINT)  # fmt: skip
    if not (worker or beat):
        # A scan of every job key: for an operator's `jobql check`, not a container's probe
        # every few seconds (`--worker`, `--beat`).
        _old_layout(settings)
    check(f"broker at {_safe(settings.broker)} answers", lambda: _broker(settings),
          "Is it running and is JOBQL_BROKER_URL (or the Redis URL) right?")  # fmt: skip
    if rabbitmq.is_amqp(settings.broker):
        try:
            for warning in rabbitmq.server_warnings(settings, rabbitmq.server_properties(settings)):
                _warn(f"broker: {warning}")
        except Exception:  # noqa: S110  (the broker check above reported it)
            pass
    if settings.broadcast != settings.redis:
        check(f"broadcast Redis at {_safe(settings.broadcast)} answers", ping(settings.broadcast),
              "Is JOBQL_BROADCAST_URL right?")  # fmt: skip
    if settings.result_backend != settings.redis:
        backend = settings.result_backend
        probe = (
            _database(backend, settings.connect_timeout) if is_database(backend) else ping(backend)
        )
        check(f"result backend at {_safe(backend)} answers", probe,
              "Is JOBQL_RESULT_BACKEND_URL right?")  # fmt: skip
    if worker:

        def alive() -> None:
            client = redis_clients.sync_client(settings.redis, settings, decode=False)
            try:
                if not client.exists(worker_key(settings, worker)):
                    raise LookupError(f"no heartbeat from {worker} in the last "
                                      f"{settings.heartbeat_ttl:g} s")  # fmt: skip
            finally:
                redis_clients.close(client)

        check(f"worker {worker} beats", alive, "Is it running and consuming this broker?")
    if beat:
        beat_command = ("your project's `celery -A yourproject beat`"
                        if settings.schedule_store == "django" else "`jobql beat`")  # fmt: skip
        check("beat holds the schedules' lock and renews it", lambda: _beat_lock(settings),
              f"Is {beat_command} running against this Redis?")  # fmt: skip
    sys.stdout.flush()
    return 1 if failures else 0


def _beat_lock(settings: Settings) -> None:
    """The schedules' lock: RedBeat's, or with ``JOBQL_SCHEDULE_STORE=django`` the Django beat's
    lease (tasks.django_beat.scheduler). The beat that runs the schedules renews it on every
    tick (at least every ``JOBQL_BEAT_INTERVAL``) to ``JOBQL_BEAT_LOCK_TIMEOUT``, so it exists
    exactly while a beat has renewed it within that timeout: a beat that stopped, hung or lost
    Redis lets it expire. A standby beat passes while the active one holds it: the schedules
    run."""
    key = DJANGO_LOCK_KEY if settings.schedule_store == "django" else LOCK_KEY
    client = redis_clients.sync_client(settings.redis, settings, decode=False)
    try:
        left = client.pttl(key)
    finally:
        redis_clients.close(client)
    if left is None or int(left) < 0:
        raise LookupError(f"no beat renewed the lock in the last {settings.beat_lock_timeout} s "
                          "(JOBQL_BEAT_LOCK_TIMEOUT)")  # fmt: skip


WRITE_HINT = (
    "Free memory or raise maxmemory (OOM); free disk space where Redis saves, then BGSAVE (MISCONF)"
)


def _write(settings: Settings) -> None:
    client = _records(settings)
    try:
        client.set(WRITE_PROBE_KEY, "1", px=WRITE_PROBE_MS)
    finally:
        redis_clients.close(client)


def _durability(url: str, settings: Settings) -> None:
    """A warning, not a failure: a Redis that loses jobs on a crash still answers."""
    quick = settings.model_copy(update={"socket_timeout": settings.connect_timeout})
    client = redis_clients.sync_client(url, quick, decode=False)
    try:
        for warning in durability_warnings(client):
            _warn(f"Redis at {_safe(url)}: {warning}")
    except redis.RedisError:
        pass  # the ping above reported it
    finally:
        redis_clients.close(client)


def _records(settings: Settings) -> redis.Redis:
    if settings.records_cluster:
        return redis_clients.sync_cluster(settings.records, settings)  # type: ignore[return-value]
    return redis_clients.sync_client(settings.records, settings)


def _old_layout(settings: Settings) -> None:
    """A warning: job records written before keys carried a hash tag are no longer read."""
    client = _records(settings)
    try:
        old = sum(
            1
            for key in client.scan_iter(match=f"{records.JOB_KEY_PREFIX}*", count=1000)
            if "{" not in (key.decode() if isinstance(key, bytes) else key)
        )
    except redis.RedisError:
        return  # the pings report it
    finally:
        redis_clients.close(client)
    if old:
        _warn(f"{old} job records of the layout before hash tags are not read until `jobql "
              "migrate` rewrites them (docs: Upgrading)")  # fmt: skip


def _database(url: str, timeout: float) -> Callable[[], object]:
    """A SELECT 1 through SQLAlchemy, as Celery's database backend connects."""

    def probe() -> object:
        import sqlalchemy

        engine = sqlalchemy.create_engine(
            url.removeprefix("db+"), connect_args={"connect_timeout": max(1, int(timeout))}
        )
        try:
            with engine.connect() as connection:
                return connection.execute(sqlalchemy.text("SELECT 1")).scalar()
        finally:
            engine.dispose()

    return probe


def _importer(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(module)


def _broker(settings: Settings) -> None:
    """Connect as the producer does: Celery's configuration carries TLS and Sentinel options."""
    from tasks.core.app import create_celery_app

    app = create_celery_app(settings, producer=True)
    timeout = settings.connect_timeout
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
    finally:
        app.close()
