"""The base class of every task in JobQL's Celery app, typed or written the usual Celery way,
whose hooks record each state change. It relies on Celery's tracer (``celery.app.trace``,
verified on 5.7) running ``before_start`` inside the trace, so raising ``Ignore`` there skips the
body, and calling ``on_success``, ``on_failure`` and ``on_retry`` right after the result backend
stored the outcome and right before the matching signal, in the run's own thread.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import redis
from celery import Task, states
from celery.exceptions import BackendStoreError, Ignore, Reject

from tasks.core import events, formats, job_logs, liveness, run_lease
from tasks.core.messages import OWNER_HEADER
from tasks.core.records import TERMINAL_STATES, checked_json
from tasks.core.settings import get_settings

logger = logging.getLogger(__name__)

# Headers of a message sent again because another run held the job's lease
# (:meth:`JobTask._wait_for`): how many times it waited, and whether the delivery it
# replaces was a redelivery (which counts towards ``JOBQL_MAX_WORKER_LOSSES``).
DEFERRALS = "jobql_lease_waits"
REDELIVERED = "jobql_redelivered"


class JobTask(Task):  # type: ignore[misc]
    """Records starts, ``update_state`` progress, results, failures and retries as job events."""

    # The worker's request of each message: it shows no job input (named, not imported:
    # the API never loads the worker's modules).
    Request = "tasks.worker.requests:JobRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The run, with its result measured before anything stores or forwards it.

        Celery's tracer calls this instead of ``run`` once it is overridden, inside the
        request it pushed (``Task.__call__`` would push a second, empty one). A result over
        ``JOBQL_MAX_RESULT_BYTES`` raises :class:`tasks.core.records.ResultTooLarge` here: the
        job fails with that type, and neither the result backend, the record nor a chain's
        next step ever receives the result. What the body logs with ``logging`` goes to the
        job's log lines too (:mod:`tasks.core.job_logs`).
        """
        if self.request.called_directly:
            return super().__call__(*args, **kwargs)
        if _builtin(self.name):
            return self.run(*args, **kwargs)
        with job_logs.capturing(self.request.id):
            result = self.run(*args, **kwargs)
        self.request.jobql_result_json = checked_json(result, get_settings().max_result_bytes)
        return result

    def before_start(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # A job cancelled while it waited never runs, whichever worker holds it, and a
        # redelivered message of a finished job does not run it twice. A job whose runs
        # keep killing their worker (a poison job) fails after a bounded number of them.
        if _builtin(self.name):
            return
        delivery = self.request.delivery_info or {}
        message_format(self.request)
        redelivered = bool(delivery.get("redelivered") or getattr(self.request, REDELIVERED, None))
        try:
            # An eager run (``apply``) is no broker's delivery: nothing can deliver it twice.
            leased = run_lease.wanted and not self.request.is_eager
            if leased and (holder := run_lease.take(events.client(), task_id)):
                self._wait_for(holder, task_id, redelivered)
            if redelivered:
                lost = events.losses(task_id)
                if lost > get_settings().max_worker_losses:
                    logger.error("job %s lost its worker %d times; failing it", task_id, lost)
                    events.gave_up(task_id, self.name, lost)
                    raise Ignore()
            outcome = events.started(
                task_id,
                self.name,
                self.request.retries or 0,
                kwargs,
                delivery.get("routing_key") or "",
                self.request.hostname or "",
                owner_hint(self.request),
                liveness.incarnation(),
            )
        except redis.RedisError:
            logger.exception("could not record the start of job %s", task_id)
            return
        if outcome in TERMINAL_STATES:
            logger.info("job %s is already %s; not running it again", task_id, outcome)
            raise Ignore()
        if outcome == "ok":
            # Its outcome may go to the record from the result backend's store.
            self.request.jobql_started = True

    def _wait_for(self, holder: run_lease.Holder, task_id: str, redelivered: bool) -> None:
        """Another run of the job holds its lease (this delivery is a broker's second one,
        as RabbitMQ's after a connection loss): this one is not run. Its message goes out again
        to arrive when the lease would lapse, as it is (not a retry: nothing is recorded), and
        this one is acknowledged; the copy then finds the job finished, or runs it if the run
        holding the lease was lost. A redelivery's copy says so, for the lost-worker count."""
        request = self.request
        waits = int(getattr(request, DEFERRALS, None) or 0) + 1
        delay = min(max(holder.lapses_in, 0.0), run_lease.lease_seconds()) + 0.2
        log = logger.warning if waits == 1 else logger.info
        log(
            "job %s: this delivery waits for the run holding its lease (%s), %.1f s (wait %d)",
            task_id,
            holder.token,
            delay,
            waits,
        )
        copy = self.signature_from_request(request, countdown=delay)
        headers = {**(copy.options.get("headers") or {}), DEFERRALS: waits}
        if redelivered:
            headers[REDELIVERED] = True
        copy.options["headers"] = headers
        copy.options["expires"] = None  # the job started already: it can no longer expire
        try:
            copy.apply_async()
        except Exception as exc:
            # Not sent: this delivery goes back to the broker instead, after the same wait
            # (a pool process held that long; the broker is failing anyway).
            logger.warning("job %s: could not send its delivery again (%s); requeued", task_id, exc)
            time.sleep(delay)
            raise Reject(exc, requeue=True) from exc
        raise Ignore()

    def on_success(
        self, retval: Any, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        if not _builtin(self.name) and not recorded(self.request):
            payload = getattr(self.request, "jobql_result_json", None)
            events.succeeded(task_id, self.name, retval, payload)

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        if not _builtin(self.name) and not recorded(self.request):
            events.failed(task_id, self.name, exc)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Any:
        """Celery's retry, with the job recorded as RETRY before the retry's message goes out.

        Celery sends the message first and calls ``on_retry`` after: with a short countdown
        another pool process started the retry in between, its STARTED was then overwritten
        by the late RETRY, and the record counted a lost worker (one more towards
        ``JOBQL_MAX_WORKER_LOSSES``). Only a retry that will happen is recorded here (not one
        past its ``max_retries``, which fails the job instead).
        """
        request = self.request
        limit = self.max_retries if max_retries is None else max_retries
        retries = (request.retries or 0) + 1
        happens = limit is None or retries <= limit
        if happens and not _builtin(self.name) and not request.called_directly:
            events.retrying(request.id, self.name, retries, exc or sys.exc_info()[1])
            request.jobql_retry_recorded = True
            # This run is over: the retry's message must not wait for its lease.
            run_lease.release(events.client(), request.id)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        einfo: Any,
    ) -> None:
        if not _builtin(self.name) and not getattr(self.request, "jobql_retry_recorded", False):
            events.retrying(task_id, self.name, (self.request.retries or 0) + 1, exc)

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Celery's ``self.update_state(state="PROGRESS", meta=...)``, broadcast as progress."""
        job_id = task_id or self.request.id
        if not job_id or state in states.ALL_STATES:
            super().update_state(task_id=job_id, state=state, meta=meta, **kwargs)
            return
        events.progressed(job_id, self.name, meta)
        if get_settings().celery_results != "all":  # Celery's backend gets no progress copy
            return
        try:
            # Not retried (max_retries=0): a progress report is best-effort, and the backend
            # otherwise retries for the whole outage tolerance inside the task body.
            super().update_state(task_id=job_id, state=state, meta=meta, max_retries=0, **kwargs)
        except (redis.RedisError, OSError, BackendStoreError):
            # The job record has the progress already; Celery's own copy (for AsyncResult
            # and Flower) may miss one report, but a Redis blip must not fail the job. Seen
            # in the Redis-restart test: the report raised and the job ended in FAILURE.
            logger.warning("progress of job %s not stored in Celery's result backend", job_id)


def recorded(request: Any) -> bool:
    """Whether the result backend wrote the run's outcome to its record already
    (``tasks.worker.results``, with the outcome stored once)."""
    return bool(getattr(request, "jobql_outcome_recorded", False))


def owner_hint(request: Any) -> str | None:
    """The owner the job's message names (Celery makes a message's own headers attributes
    of the request); None for a message sent without it (plain Celery, an older API)."""
    owner = getattr(request, OWNER_HEADER, None)
    return owner if isinstance(owner, str) else None


def message_format(request: Any) -> int | None:
    """The format of the job's message (:data:`tasks.core.formats.FORMAT_HEADER`): 1 for one
    sent without it (an older JobQL, plain Celery), said once in the log as every other kind."""
    value = getattr(request, formats.FORMAT_HEADER, None)
    if value == formats.RECORD_FORMAT:
        return formats.RECORD_FORMAT
    return formats.met("task messages", value)


def _builtin(name: str) -> bool:
    """Celery's own tasks (``celery.chord_unlock``, ``celery.backend_cleanup``) are no jobs."""
    return name.startswith("celery.")
