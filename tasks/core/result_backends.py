"""Which Celery result backend a URL names, the options JobQL gives it, and what every
reader of a database backend must use: a subclass that never unpickles a stored row (a fix) and
compresses only above a threshold. Shared by the API's producer apps and the worker; the Redis
backend with its one-call store is the worker's (:mod:`tasks.worker.results`), named here by its
dotted path so the API never imports it.
"""

from __future__ import annotations

import inspect
from typing import Any

from celery.backends.base import compress_payload
from celery.backends.database import DatabaseBackend as CeleryDatabaseBackend

from tasks.core import compat, redis_clients
from tasks.core.settings import Settings

WORKER_BACKENDS = "tasks.worker.results"


# Keys of JobQL's own in the Celery configuration, read by the backends below.
COMPRESSION_KEY = "jobql_result_compression"


THRESHOLD_KEY = "jobql_result_compression_threshold"


def is_database(url: str) -> bool:
    return url.startswith("db+")


def is_redis(url: str) -> bool:
    """A Redis that Celery's plain Redis backend speaks to (Sentinel has a backend of its own)."""
    return redis_clients.is_redis(url) and not redis_clients.is_sentinel(url)


def worker_backend(settings: Settings) -> str:
    """The worker's result backend: JobQL's subclass of Celery's, for the URL's kind."""
    url = settings.result_backend
    if is_redis(url):
        return f"{WORKER_BACKENDS}:RedisBackend+{url}"
    if is_database(url):
        return database_backend(settings)
    return url  # another Celery backend, as Celery knows it


def database_backend(settings: Settings) -> str:
    """JobQL's database backend, for the worker and for a chord's sender alike: whoever reads
    the table must never unpickle it (the fix is decided here, in every process that builds it)."""
    compat.decide(NO_PICKLE, _check_no_pickle, settings)
    return f"{__name__}:DatabaseBackend+{settings.result_backend.removeprefix('db+')}"


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


class ThresholdCompression:
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


class DatabaseBackend(ThresholdCompression, CeleryDatabaseBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_compression()

    def _decode_stored_result(self, payload: Any) -> Any:
        """Decoded with the configured serializer only: never unpickled.

        Overrides a private method of Celery's (registered as a fix in ``tasks.core.compat``:
        its start-up check warns if the method is gone, and the fix with it).
        """
        return None if payload is None else self.decode(bytes(payload))


NO_PICKLE = compat.fix(
    "celery.database_backend_no_pickle",
    "celery",
    "celery 5.7.0",
    "Celery's own decoding of stored rows (which unpickles legacy-looking rows)",
    upstream="Celery's DatabaseBackend unpickles a stored row whose first byte looks like a "
    "pickle, for rows from before celery/celery#3025 (not reported yet)",
)


def _check_no_pickle() -> None:
    method = getattr(CeleryDatabaseBackend, "_decode_stored_result", None)
    if method is None or list(inspect.signature(method).parameters) != ["self", "payload"]:
        raise LookupError("DatabaseBackend._decode_stored_result(payload) is gone")
