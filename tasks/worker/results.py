"""Celery's Redis result backend as the worker runs it: one round trip per store (a speed-up),
compression above a threshold in Celery's own format, and a cleanup of a database backend each
worker runs itself (:class:`ResultCleanup`). A job's outcome is stored once, in its record: with
``JOBQL_CELERY_RESULTS=final`` the outcome of a job this worker started is written to the record
by the backend itself and only announced on Celery's channel, and ``AsyncResult`` reads a task
with no ``celery-task-meta-`` key from its record (:mod:`tasks.core.record_results`). Chords
still count their parts in the backend's own keys.
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
from celery.utils.serialization import create_exception_cls

from tasks.core import compat, events, record_results, records, slots
from tasks.core.result_backends import RECORDS_KEY, RESULTS_KEY, is_database, is_redis
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


RESULTS_ONCE = compat.design(
    "celery.redis_backend_results_once",
    "celery",
    "celery 5.7.0",
    "Celery's own store: a celery-task-meta- key beside the job's record",
    why="P16: a finished job's outcome is stored once, in its record, and AsyncResult reads it "
    "there; Celery's waiters still hear it on the key's channel",
)

# Set on a run's request once its start is recorded (tasks.core.base, tasks.worker.signals):
# only such a run's outcome goes to the record, from the tracer's store, in the run itself.
# A store made elsewhere (the worker's main process after a lost pool child, a revocation)
# takes Celery's own path.
STARTED_MARK = "jobql_started"
# Set on the request once the backend recorded the outcome: the hooks then skip theirs.
RECORDED_MARK = "jobql_outcome_recorded"


def _check_results_once() -> None:
    """Celery's readers still go through ``get``/``mget`` of the task's key, and its waiters
    still subscribe to that key's channel and read the stored meta once subscribed."""
    from celery.backends.base import KeyValueStoreBackend
    from celery.backends.redis import ResultConsumer

    readers = inspect.getsource(KeyValueStoreBackend._get_task_meta_for) + inspect.getsource(
        KeyValueStoreBackend.get_many
    )
    for part in ("self.get(self.get_key_for_task", "self.mget("):
        if part not in readers:
            raise LookupError(f"Celery's result readers no longer use {part}")
    waiter = inspect.getsource(ResultConsumer._consume_from) + inspect.getsource(
        ResultConsumer.on_wait_for_pending
    )
    for part in ("_get_key_for_task", "subscribe(key)", "_iter_meta"):
        if part not in waiter:
            raise LookupError(f"Celery's result waiter no longer uses {part}")
    _check_one_call_store()  # the same store hook and meta


class RedisBackend(ThresholdCompression, CeleryRedisBackend):  # type: ignore[misc]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._setup_compression()
        self._store_script: Any = None
        self._once = self.app.conf.get(RESULTS_KEY) == "final"
        where = self.app.conf.get(RECORDS_KEY) or {}
        self._records_apart = bool(where.get("apart", False))
        self._shards = int(where.get("shards", 1))

    def get(self, key: Any) -> Any:
        """The stored meta, or a job's record read as one where none is stored."""
        value = super().get(key)
        if value is None and (task_id := self._task_of(key)) is not None:
            return self._from_records([task_id])[0]
        return value

    def mget(self, keys: Any) -> Any:
        values = list(super().mget(keys))
        missing = [i for i, value in enumerate(values) if value is None]
        ids = [self._task_of(keys[i]) for i in missing]
        wanted = [(i, task_id) for i, task_id in zip(missing, ids, strict=True) if task_id]
        if wanted:
            found = self._from_records([task_id for _, task_id in wanted])
            for (i, _), value in zip(wanted, found, strict=True):
                values[i] = value
        return values

    def _task_of(self, key: Any) -> str | None:
        text = key.decode() if isinstance(key, bytes) else str(key)
        prefix = self.task_keyprefix.decode()
        return text[len(prefix) :] if text.startswith(prefix) else None

    def _from_records(self, task_ids: list[str]) -> list[Any]:
        """The encoded meta of each job's record, None where there is none (or no Redis of
        records to ask: a plain Celery client without JobQL's settings)."""
        try:
            client = events.client() if self._records_apart else self.client
            with client.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    key = records.job_prefix(slots.tag_for(task_id, self._shards)) + task_id
                    pipe.hmget(key, record_results.FIELDS)
                answers = pipe.execute()
        except (redis.RedisError, ValueError, RuntimeError) as exc:
            logger.debug("job records not read for Celery's results: %s", exc)
            return [None] * len(task_ids)
        metas = [
            record_results.meta_of(task_id, [_text(value) for value in values])
            for task_id, values in zip(task_ids, answers, strict=True)
        ]
        return [None if meta is None else self.encode(meta) for meta in metas]

    def _in_record(
        self, task_id: Any, result: Any, state: str, traceback: Any, request: Any
    ) -> bool:
        """With the outcome stored once (``JOBQL_CELERY_RESULTS=final``): a run's success or
        failure goes to its job's record, and its other states (a retry) are only announced,
        the record has them. False: Celery's own store is to do it."""
        task_id = task_id.decode() if isinstance(task_id, bytes) else task_id
        if RESULTS_ONCE.active and request is not None and getattr(request, STARTED_MARK, False):
            if state in (states.SUCCESS, states.FAILURE):
                if self._record_outcome(task_id, result, state, traceback, request):
                    return True
            elif state != states.REVOKED:
                meta = self._get_result_meta(
                    result=result, state=state, traceback=traceback, request=request
                )
                meta["task_id"] = task_id
                key = self.get_key_for_task(task_id)
                self.ensure(self.client.publish, (key, self.encode(meta)))
                return True
        # Celery's own rule, where the success is in the record and not in a key: a late
        # failure or revocation (the worker's main process after a lost pool child, a
        # terminate) never overwrites it.
        return state in states.PROPAGATE_STATES and self._record_succeeded(task_id)

    def _exception(self, described: Any) -> BaseException:
        """The exception Celery described, as ``AsyncResult`` raises it again (its type and
        arguments), for the record's ``error``; a plain one with its words if it cannot be."""
        if isinstance(described, BaseException):
            return described
        try:
            exception = self.exception_to_python(described)
        except Exception:
            exception = None
        if isinstance(exception, BaseException):
            return exception
        fields = described if isinstance(described, dict) else {"exc_message": described}
        name = str(fields.get("exc_type") or "Error").rsplit(".", 1)[-1]
        words = fields.get("exc_message")
        message = " ".join(map(str, words)) if isinstance(words, list | tuple) else str(words)
        return create_exception_cls(name, __name__)(message)  # type: ignore[no-any-return]

    def _record_succeeded(self, task_id: str) -> bool:
        stored = self._from_records([task_id])[0]
        return stored is not None and self.decode_result(stored)["status"] == states.SUCCESS

    def _record_outcome(
        self, task_id: str, result: Any, state: str, traceback: Any, request: Any
    ) -> bool:
        """Write the outcome of a run this worker started into the job's record, and announce
        Celery's meta on the task key's channel for ``AsyncResult.get()``; False when it is
        Celery's own store's to do (no record, or none could be written)."""
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = task_id
        task = getattr(request, "task", None) or ""
        if state == states.SUCCESS:
            payload = getattr(request, "jobql_result_json", None)
            outcome = events.succeeded(task_id, task, result, payload)
        else:
            # Celery hands the store its description of the exception, not the exception.
            error = record_results.error_field(meta["result"], meta.get("traceback"))
            outcome = events.failed(task_id, task, self._exception(result), error)
        if outcome is None or outcome == "missing":
            return False
        setattr(request, RECORDED_MARK, True)
        if outcome != "ok":
            # The record is final already (a success stays, as Celery's own rule keeps
            # it): announce what it holds, for whoever waits.
            value = self._from_records([task_id])[0]
            if value is None:
                return True
        else:
            value = self.encode(meta)
        self.ensure(self.client.publish, (self.get_key_for_task(task_id), value))
        return True

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
        and its SETEX and PUBLISH, in one script instead of a GET and a MULTI pipeline;
        with the outcome stored once, the job's record instead (:meth:`_in_record`)."""
        if self._once and self._in_record(task_id, result, state, traceback, request):
            return result
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


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def worker_options(settings: Settings) -> dict[str, Any]:
    """What the worker's backends add to :func:`tasks.core.result_backends.backend_options`:
    the speed-up, decided (and checked) once, in the worker (the database backend's fix is
    decided wherever its class is named: :func:`tasks.core.result_backends.database_backend`)."""
    if is_redis(settings.result_backend):
        compat.decide(ONE_CALL_STORE, _check_one_call_store, settings)
        compat.decide(RESULTS_ONCE, _check_results_once, settings)
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
