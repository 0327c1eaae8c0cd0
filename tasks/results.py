"""Celery's result backends as JobQL configures them: Redis (default) or a SQL database.

JobQL reads jobs from its own records (``tasks.records``), never from Celery's results.
The result backend still matters: the worker's tracer stores every outcome there (for
``AsyncResult`` users and Flower), chords count their parts in it, and a chord's sender
needs one. Two things are added to Celery's own backends:

- **Compression above a threshold.** Celery's ``result_compression`` compresses every
  result; here only payloads larger than ``JOBQL_COMPRESSION_THRESHOLD_BYTES`` are, in
  Celery's own self-describing format (a marker, the codec, the body), so any stock Celery
  reader decodes them and small results cost nothing.
- **No pickle from the database.** Celery 5.7's database backend unpickles a stored row it
  cannot decode if its first byte looks like a pickle (rows from before celery#3025):
  anyone who can write that table could run code on every reader. Here it is an error.

A database keeps results until something deletes them (Redis expires them itself); Celery
leaves that to ``celery.backend_cleanup`` run by beat. Each JobQL worker runs the cleanup
itself instead, every ``JOBQL_RESULT_CLEANUP_INTERVAL`` (see :class:`ResultCleanup`).
"""

from __future__ import annotations

import inspect
import json
import logging
import threading
from typing import Any

from celery import bootsteps
from celery.backends.base import compress_payload
from celery.backends.database import DatabaseBackend as CeleryDatabaseBackend
from celery.backends.redis import RedisBackend as CeleryRedisBackend

from tasks import compat, redis_clients
from tasks.settings import Settings

logger = logging.getLogger(__name__)

# Keys of JobQL's own in the Celery configuration, read by the backends below.
COMPRESSION_KEY = "jobql_result_compression"
THRESHOLD_KEY = "jobql_result_compression_threshold"


class ResultTooLarge(Exception):
    """A job's result is larger than ``JOBQL_MAX_RESULT_BYTES``: the job fails unwritten."""


def checked_json(result: Any, limit: int) -> str:
    """The result as the job record stores it; raises :class:`ResultTooLarge` over ``limit``."""
    payload = json.dumps(result, default=str, separators=(",", ":"))
    size = len(payload.encode())
    if size > limit:
        raise ResultTooLarge(
            f"the result is {size} bytes of JSON, more than JOBQL_MAX_RESULT_BYTES ({limit}); "
            "store large outputs elsewhere and return a reference"
        )
    return payload


class _ThresholdCompression:
    """``encode`` compresses only payloads above the configured size.

    Celery's own compression (``self.compression``) stays off; its public ``encode`` and
    ``compress_payload`` do the work, and its ``decode`` reads either form.
    """

    app: Any
    compression: str | None

    def _setup_compression(self) -> None:
        conf = self.app.conf
        method = conf.get(COMPRESSION_KEY) or None
        self._method = method if method and method != "none" else None
        self._threshold = int(conf.get(THRESHOLD_KEY) or 0)
        self.compression = None

    def encode(self, data: Any) -> Any:
        payload = super().encode(data)  # type: ignore[misc]
        if self._method and len(payload) > self._threshold:
            payload = compress_payload(payload, self._method)
        return payload


class RedisBackend(_ThresholdCompression, CeleryRedisBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_compression()


class DatabaseBackend(_ThresholdCompression, CeleryDatabaseBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_compression()

    def _decode_stored_result(self, payload: Any) -> Any:
        """Decoded with the configured serializer only: never unpickled.

        Overrides a private method of Celery's (registered as a fix in ``tasks.compat``:
        its start-up check warns if the method is gone, and the fix with it).
        """
        return None if payload is None else self.decode(bytes(payload))


NO_PICKLE = compat.FastPath(
    name="celery.database_backend_no_pickle",
    library="celery",
    verified="celery 5.7.0",
    fallback="Celery's own decoding of stored rows (which unpickles legacy-looking rows)",
    fix=True,
)


def _check_no_pickle() -> None:
    method = getattr(CeleryDatabaseBackend, "_decode_stored_result", None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "payload"]:
        raise LookupError("DatabaseBackend._decode_stored_result(payload) is gone")


def is_database(url: str) -> bool:
    return url.startswith("db+")


def is_redis(url: str) -> bool:
    """A Redis that Celery's plain Redis backend speaks to (Sentinel has a backend of its own)."""
    return redis_clients.is_redis(url) and not redis_clients.is_sentinel(url)


def worker_backend(settings: Settings) -> str:
    """The worker's result backend: JobQL's subclass of Celery's, for the URL's kind."""
    url = settings.result_backend
    if is_redis(url):
        return f"{__name__}:RedisBackend+{url}"
    if is_database(url):
        compat.enable(NO_PICKLE, _check_no_pickle, allowed=True)
        return f"{__name__}:DatabaseBackend+{url.removeprefix('db+')}"
    return url  # another Celery backend, as Celery knows it


def backend_options(settings: Settings) -> dict[str, Any]:
    """Celery settings for the result backend, derived from JobQL's."""
    options: dict[str, Any] = {
        COMPRESSION_KEY: settings.compression,
        THRESHOLD_KEY: settings.compression_threshold_bytes,
    }
    if is_database(settings.result_backend):
        # The tables are made at the first use, not at a worker's start.
        options["database_create_tables_at_setup"] = False
    return options


class ResultCleanup(bootsteps.StartStopStep):  # type: ignore[misc]
    """Deletes expired results from a database backend, as ``celery.backend_cleanup`` does.

    Every worker runs it on its own timer (a DELETE of rows past ``result_expires`` is
    idempotent, so two workers running it at once do no harm), so no beat is needed.
    """

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def include_if(self, worker: Any) -> bool:
        from tasks.settings import get_settings

        settings = get_settings()
        return is_database(settings.result_backend) and settings.result_cleanup_interval > 0

    def start(self, worker: Any) -> None:
        from tasks.settings import get_settings

        interval = get_settings().result_cleanup_interval
        self._thread = threading.Thread(
            target=self._run, args=(worker.app, interval), name="jobql-result-cleanup", daemon=True
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    shutdown = stop

    def _run(self, app: Any, interval: float) -> None:
        while True:
            cleanup(app)
            if self._stop.wait(interval):
                return


def cleanup(app: Any) -> None:
    """Delete the results that expired; a database that does not answer is logged."""
    try:
        app.backend.cleanup()
    except Exception:
        logger.exception("could not delete expired results from the result backend")
    else:
        logger.debug("deleted expired results from the result backend")
