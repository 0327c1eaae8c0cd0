"""Which Celery result backend a URL names and the options JobQL gives it, shared by the API's
producer apps and the worker. Backends are named by dotted path: the Redis one with its one-call
store is the worker's (:mod:`tasks.worker.results`), the database one every reader's
(:mod:`tasks.core.database_backend`, which needs SQLAlchemy: loaded only for such a backend).
"""

from __future__ import annotations

from typing import Any

from tasks.core import compat, redis_clients
from tasks.core.result_compression import COMPRESSION_KEY, THRESHOLD_KEY
from tasks.core.settings import Settings

WORKER_BACKENDS = "tasks.worker.results"
# Celery setting of JobQL's own: ``JOBQL_CELERY_RESULTS``, for the backend that honours it.
RESULTS_KEY = "jobql_celery_results"
# Where the backend finds job records: ``apart`` when they are not on the result backend's
# Redis (another URL, a cluster: then the process's records client reads them), and over
# how many hash tags they are spread. A plain Celery client naming JobQL's backend without
# this setting reads them on the backend's Redis, with one tag (the defaults).
RECORDS_KEY = "jobql_records"


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
    from tasks.core import database_backend  # SQLAlchemy's, installed with such a backend

    compat.decide(database_backend.NO_PICKLE, database_backend.check_no_pickle, settings)
    url = settings.result_backend.removeprefix("db+")
    return f"{database_backend.__name__}:DatabaseBackend+{url}"


def backend_options(settings: Settings) -> dict[str, Any]:
    """Celery settings for the result backend, derived from JobQL's."""
    options: dict[str, Any] = {
        COMPRESSION_KEY: settings.compression,
        THRESHOLD_KEY: settings.compression_threshold_bytes,
        RESULTS_KEY: settings.celery_results,
        RECORDS_KEY: {
            "apart": settings.records != settings.result_backend or settings.records_cluster,
            "shards": settings.shards,
        },
    }
    if is_database(settings.result_backend):
        # The tables are made at the first use, not at a worker's start.
        options["database_create_tables_at_setup"] = False
    return options
