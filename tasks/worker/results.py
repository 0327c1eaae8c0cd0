"""Celery's Redis result backend as the worker runs it: one round trip per store (a speed-up),
compression above a threshold in Celery's own format, and a cleanup of a database backend each
worker runs itself (:class:`ResultCleanup`). JobQL reads jobs from its own records, but the
backend still matters: the tracer stores every outcome there, and chords count their parts in it.
The database backend every reader of the table needs is in :mod:`tasks.core.result_backends`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any

import redis
from celery import bootsteps, states
from celery.backends.redis import RedisBackend as CeleryRedisBackend
from celery.exceptions import BackendStoreError

from tasks.core import compat
from tasks.core.result_backends import is_database, is_redis
from tasks.core.result_compression import ThresholdCompression
from tasks.core.result_scripts import STORE_SCRIPT
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)


ONE_CALL_STORE = compat.speed_up(
    "celery.redis_backend_one_call_store",
    "celery",
    "celery 5.7.0",
    "Celery's own store: a GET of the stored state, then SETEX and PUBLISH",
    figure="P10: jobs a worker finishes per second (one round trip per outcome, not two)",
)


def _check_one_call_store() -> None:
    """``_store_result`` is still the hook, and what it does is still: the meta, Celery's
    success rule, the expiry by state, then SETEX and PUBLISH on the key (its source)."""
    hook = getattr(CeleryRedisBackend, "_store_result", None)
    params = ["self", "task_id", "result", "state", "traceback", "request", "kwargs"]
    if hook is None or list(inspect.signature(hook).parameters) != params:
        raise LookupError("_store_result(task_id, result, state, traceback, request) is gone")
    source = inspect.getsource(hook) + inspect.getsource(CeleryRedisBackend._set)
    for part in ("_get_result_meta", "_get_task_meta_for", "states.SUCCESS", "setex", "publish"):
        if part not in source:
            raise LookupError(f"the result store no longer uses {part}")
    for name in ("_set_with_state", "get_key_for_task", "_MAX_STR_VALUE_SIZE", "ensure"):
        if not hasattr(CeleryRedisBackend, name):
            raise LookupError(f"RedisBackend.{name} is gone")


class RedisBackend(ThresholdCompression, CeleryRedisBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_compression()
        self._store_script: Any = None

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Celery's store in one round trip: its read of the stored state (a success stays)
        and its SETEX and PUBLISH, in one script instead of a GET and a MULTI pipeline."""
        if not ONE_CALL_STORE.active:
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id.decode() if isinstance(task_id, bytes) else task_id
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        key = self.get_key_for_task(task_id)
        try:
            stored = self.ensure(self._store_once, (key, value, int(expires or 0)))
        except redis.ResponseError:
            # Scripts refused (an ACL on a result backend of its own), or Redis out of
            # memory: Celery's own store then works, or fails as it would have anyway.
            stored = "undecided"
        if stored in ("undecided", b"undecided"):
            ONE_CALL_STORE.count_fallback()
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        return result

    def _store_once(self, key: Any, value: Any, expires: int) -> Any:
        client = self.client
        if self._store_script is None or self._store_script.registered_client is not client:
            self._store_script = client.register_script(STORE_SCRIPT)
        return self._store_script(keys=[key], args=[value, expires])


def worker_options(settings: Settings) -> dict[str, Any]:
    """What the worker's backends add to :func:`tasks.core.result_backends.backend_options`:
    the speed-up, decided (and checked) once, in the worker (the database backend's fix is
    decided wherever its class is named: :func:`tasks.core.result_backends.database_backend`)."""
    if is_redis(settings.result_backend):
        compat.decide(ONE_CALL_STORE, _check_one_call_store, settings)
    return {}


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
        from tasks.core.settings import get_settings

        settings = get_settings()
        return is_database(settings.result_backend) and settings.result_cleanup_interval > 0

    def start(self, worker: Any) -> None:
        from tasks.core.settings import get_settings

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
