"""Which Celery result backend a URL names, and the options JobQL gives it: configuration only,
shared by the API's producer apps and the worker. The backend classes themselves (compression
above a threshold, one-call stores, no pickle) are the worker's (:mod:`tasks.worker.results`),
named here by their dotted path so the API never imports them.
"""

from __future__ import annotations

from typing import Any

from tasks.core import redis_clients
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
        return f"{WORKER_BACKENDS}:DatabaseBackend+{url.removeprefix('db+')}"
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
