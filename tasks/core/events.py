"""The worker's writer of job records: every state change updates the snapshot and publishes it
in one call of the update script, so the sequence grows by one per change and the event equals
the snapshot it announces. A plain module that knows records and Redis, not who calls it
(:class:`tasks.core.base.JobTask`'s hooks, and :mod:`tasks.worker.signals` where Celery has no
hook).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import redis

from tasks.core import record_results, records, redis_clients, scripts, slots, timeline
from tasks.core.records import CANCELLABLE_STATES, RUNNING_STATES, JobState
from tasks.core.settings import get_settings
from tasks.core.workflow_records import WorkflowFailure, WorkflowSnapshot, workflow_key

logger = logging.getLogger(__name__)

_scripts_lock = threading.Lock()
_registered: tuple[redis.Redis, Any, Any] | None = None


def _scripts() -> tuple[redis.Redis, Any, Any]:
    """The process's client (:func:`tasks.core.redis_clients.records_client`), its scripts."""
    global _registered
    current = redis_clients.records_client()
    with _scripts_lock:
        if _registered is None or _registered[0] is not current:
            slots.configure(get_settings().layout)
            _registered = (
                current,
                current.register_script(scripts.CREATE_SCRIPT),
                current.register_script(scripts.UPDATE_SCRIPT),
            )
        return _registered


def client() -> redis.Redis:
    """This process's Redis client for job records (decoded responses)."""
    return _scripts()[0]


# Whose each job is, as learnt from the update script: a worker only knows a job's id and
# task, but the indexes it updates are named after the owner. Almost every job is seen
# by one process from start to end, so a small memory saves the second call.
# A job this process has not seen yet is guessed to be owned by whoever owned the last
# job of its task here: a task's jobs mostly come from one caller (a service, or the owner
# of an authenticated API), so a guess of "anonymous" cost every job a refused first call.
_owners_lock = threading.Lock()
_owners: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
_OWNERS_REMEMBERED = 4096
_GUESSED_OWNER = "anonymous"
_last_owner: dict[str, str] = {}  # task -> owner of its last job learnt here
_TASKS_REMEMBERED = 1024


def _remember(job_id: str, owner: str, task: str, workflow: str, *, learn: bool = True) -> None:
    with _owners_lock:
        _owners[job_id] = (owner, task, workflow)
        _owners.move_to_end(job_id)
        if len(_owners) > _OWNERS_REMEMBERED:
            _owners.popitem(last=False)
        if learn:
            _learn(task, owner)


def _learn(task: str, owner: str) -> None:
    """Called with ``_owners_lock`` held."""
    if _last_owner.get(task) != owner:
        if len(_last_owner) >= _TASKS_REMEMBERED:
            _last_owner.clear()
        _last_owner[task] = owner


def _guess(
    job_id: str, task: str, workflow: str, owner: str | None = None
) -> tuple[str, str, str, bool]:
    """The job's (owner, task, workflow) as remembered, or as its message named the owner,
    or else as guessed (and True)."""
    with _owners_lock:
        known = _owners.get(job_id)
        if known is not None:
            return (*known, False)
        if owner is not None:
            return owner, task, workflow, False
        return _last_owner.get(task, _GUESSED_OWNER), task, workflow, True


def owner_of(job_id: str) -> str | None:
    """The owner of a running job, as this process learnt it from the update script."""
    with _owners_lock:
        known = _owners.get(job_id)
    return known[0] if known else None


def transition(
    job_id: str,
    state: JobState,
    fields: dict[str, str] | None = None,
    *,
    task: str = "",
    allowed_from: frozenset[JobState] = frozenset(),
    workflow: str = "",
    owner: str | None = None,
    note: str = "",
) -> str:
    """Move a job to ``state``; returns 'ok', 'missing' or the state that refused the move.

    ``task`` (and ``workflow``) are the job's if the caller knows them; the owner is
    remembered, or ``owner`` (the one its message names), or guessed: a wrong one costs one
    more call, answered with the right one. A webhook the change triggers is scheduled
    here, on the worker side. ``note``: the message of the change's timeline entry.
    """
    _, _, update = _scripts()
    owner, task, workflow, guessed = _guess(job_id, task, workflow, owner)
    for _ in range(2):
        call = scripts.update_call(
            job_id,
            state,
            fields,
            owner=owner,
            task=task,
            ttl=get_settings().job_retention_seconds,
            allowed_from=allowed_from,
            workflow=workflow,
            note=note,
        )
        reply = update(keys=call.keys, args=call.args)
        if (actual := scripts.moved(reply)) is None:
            outcome, hooks = scripts.settled(reply)
            if outcome != "missing" and not state.done:
                _remember(job_id, owner, task, workflow, learn=guessed)
            else:
                with _owners_lock:
                    _owners.pop(job_id, None)
                    if outcome != "missing" and guessed:
                        _learn(task, owner)
            if hooks is not None:
                _schedule(job_id, hooks)
            if outcome == "ok" and state is JobState.FAILURE and workflow:
                skip_rest(workflow, job_id)
            return outcome
        owner, task, workflow = actual
    raise RuntimeError(f"job {job_id} changed owner or task while it was updated")


# Where webhook events go: tasks.worker.webhooks plugs its scheduler in when the worker imports it
# (it needs the Celery app, which needs this module first).
hook_sink: Callable[[scripts.Hooks], None] | None = None


def _schedule(job_id: str, hooks: scripts.Hooks) -> None:
    if hook_sink is None:
        logger.warning("a webhook of job %s is due but tasks.worker.webhooks is not loaded", job_id)
        return
    try:
        hook_sink(hooks)
    except Exception:
        logger.exception("could not schedule the webhook of job %s", job_id)


# Where a FAIL_FAST workflow's failure goes to have its running steps stopped:
# tasks.worker.fail_fast plugs itself in when the worker imports it (it needs the Celery app).
fail_fast_sink: Callable[[str, str], None] | None = None


def skip_rest(workflow_id: str, failed: str) -> None:
    """A failed step ends its workflow: the steps that have not started never will. Under
    ``onFailure: FAIL_FAST`` the running ones are stopped too, handed over once: from the
    failure that became the workflow's ``failed_step`` (the update script sets it once)."""
    client, _, _ = _scripts()
    fields: dict[str, str] = client.hgetall(workflow_key(workflow_id))  # type: ignore[assignment]
    if not fields:
        return
    workflow = WorkflowSnapshot.from_hash(fields)
    error = _error_json("Skipped", f"step {failed} of the workflow failed")
    for step in workflow.steps:
        if fields.get(f"s:{step}", JobState.PENDING.value) in (JobState.PENDING, JobState.RETRY):
            transition(
                step,
                JobState.REVOKED,
                {"error": error},
                allowed_from=CANCELLABLE_STATES,
                workflow=workflow_id,
            )
    if workflow.on_failure is WorkflowFailure.FAIL_FAST and workflow.failed_step == failed:
        if fail_fast_sink is None:
            logger.warning("workflow %s fails fast but tasks.worker.fail_fast is not loaded; "
                           "its running steps run on", workflow_id)  # fmt: skip
        else:
            fail_fast_sink(workflow_id, failed)


def adopt(job_id: str, task: str, queue: str, kwargs: dict[str, Any]) -> None:
    """Create the record of a job that was sent with plain Celery rather than through the API."""
    _, create, _ = _scripts()
    fields = records.new_record(
        job_id=job_id,
        task=task,
        owner="anonymous",
        queue=queue,
        input_json=kwargs,
        created_at=records.now(),
    )
    call = scripts.create_call(fields, ttl=get_settings().job_retention_seconds)
    create(keys=call.keys, args=call.args)
    # Its start follows at once and needs no guess (nor teaches one: whoever sends plain
    # Celery messages tells nothing of the owners of the task's other jobs).
    _remember(job_id, fields["owner"], task, "", learn=False)


def create(
    fields: dict[str, str],
    *,
    idempotency: str | None = None,
    message: tuple[str, str] | None = None,
) -> str | None:
    """Write a new PENDING record for a producer that is not the API (beat), as the API does:
    with ``message`` (queue key, Celery message) pushed and announced in the same call.

    Returns None when created, or the id of the job ``idempotency`` already points to.
    """
    _, create_script, _ = _scripts()
    call = scripts.create_call(
        fields, ttl=get_settings().job_retention_seconds, idempotency=idempotency, message=message
    )
    reply = create_script(keys=call.keys, args=call.args)
    return str(reply) if reply else None


def announce(fields: dict[str, str], on: redis.Redis | None = None) -> None:
    """Publish a new job's PENDING snapshot once another broker took its message (on this
    process's records client, or ``on`` another's)."""
    target = on or client()
    payload = records.dumps(fields)
    channels = records.channels_of(fields["id"], fields["owner"])
    if slots.current().sharded_pubsub:
        for channel in channels:
            target.spublish(channel, payload)
        return
    with target.pipeline(transaction=False) as pipe:
        for channel in channels:
            pipe.publish(channel, payload)
        pipe.execute()


def withdraw(fields: dict[str, str]) -> str:
    """Take back a run whose message another broker did not take (beat's), as the API takes
    back an enqueue (:data:`tasks.core.scripts.WITHDRAW_SCRIPT`): the record, its indexes and
    idempotency key go, whoever saw its PENDING gets its end (REVOKED, ``NotSent``), and a
    marker stays, so a worker that gets the message anyway (a publish that landed after it
    failed) drops it rather than adopting it. Returns 'ok', 'missing', or the state of a job
    a worker started already (it stays: it was sent after all).

    Raises ``redis.RedisError``.
    """
    current = client()
    call = scripts.withdraw_call(
        fields, records.unsent(fields), ttl=get_settings().job_retention_seconds
    )
    return str(current.register_script(scripts.WITHDRAW_SCRIPT)(keys=call.keys, args=call.args))


def started(
    job_id: str,
    task: str,
    retries: int,
    kwargs: dict[str, Any],
    queue: str,
    worker: str = "",
    owner: str | None = None,
    incarnation: str = "",
) -> str:
    """Record a run's start, adopting a job nobody recorded; returns the update's outcome
    (REVOKED for a job whose enqueue was withdrawn: :data:`tasks.core.scripts.WITHDRAW_SCRIPT`).

    ``owner``: the one the job's message names (``tasks.core.messages.OWNER_HEADER``), if any.
    ``incarnation``: which start of ``worker`` runs it (``tasks.worker.heartbeat.incarnation``).

    Raises ``redis.RedisError``: the caller decides whether the run may go on without it.
    """
    fields = {"retries": str(retries), "worker": worker, "incarnation": incarnation}
    outcome = transition(job_id, JobState.STARTED, fields, task=task, owner=owner)
    if outcome == "missing":
        if client().exists(records.unsent_key(job_id)):
            # Its enqueue answered SERVICE_UNAVAILABLE and took the record back; this
            # message landed anyway (a late publish): the job must not run.
            logger.warning("job %s was withdrawn unsent; skipping its late message", job_id)
            return JobState.REVOKED.value
        adopt(job_id, task, queue or get_settings().default_queue, kwargs)
        outcome = transition(job_id, JobState.STARTED, fields, task=task)
    return outcome


def losses(job_id: str) -> int:
    """How many runs of the job lost their worker, counting the one a new start would end.

    Raises ``redis.RedisError``.
    """
    state, lost = client().hmget(records.job_key(job_id), ["state", "lost"])
    return int(lost or 0) + (1 if state in RUNNING_STATES else 0)


def gave_up(job_id: str, task: str, lost: int) -> None:
    """A job whose every run kills its worker fails for good instead of looping."""
    error = _error_json(
        "WorkerLost", f"the job's worker was lost {lost} times while running it; not run again"
    )
    _safely(job_id, task, JobState.FAILURE, {"error": error, "lost": str(lost)})


def refused(job_id: str, kind: str, message: str) -> str:
    """A job whose message no worker can run (``tasks.worker.poison``) fails with why, if it still
    waits for that message: a forged or mangled copy never ends a run already going.

    Raises ``redis.RedisError``.
    """
    fields = {"error": _error_json(kind, message)}
    return transition(job_id, JobState.FAILURE, fields, allowed_from=CANCELLABLE_STATES)


def succeeded(job_id: str | None, task: str, result: Any, payload: str | None = None) -> str | None:
    """``payload``: the result's JSON, when the caller made it already. Returns the
    update's outcome, or None when it could not be recorded (see :func:`_safely`)."""
    if payload is None:
        payload = json.dumps(result, default=str, separators=(",", ":"))
    return _safely(job_id, task, JobState.SUCCESS, {"result": payload, "error": ""})


def failed(
    job_id: str | None, task: str, exception: BaseException | None, celery_error: str = ""
) -> str | None:
    """``celery_error``: Celery's description of the exception, for ``AsyncResult``
    (:func:`tasks.core.record_results.error_field`). Returns as :func:`succeeded` does."""
    kind = type(exception).__name__ if exception else "Error"
    fields = {"error": _error_json(kind, str(exception))}
    if celery_error:
        fields[record_results.CELERY_ERROR] = celery_error
    return _safely(job_id, task, JobState.FAILURE, fields)


def retrying(
    job_id: str | None, task: str, retries: int, exception: BaseException | None = None
) -> None:
    """``retries`` counts this retry too; ``exception``, what it retries after, goes on the
    job's timeline."""
    why = timeline.note(f"{type(exception).__name__}: {exception}") if exception else ""
    _safely(job_id, task, JobState.RETRY, {"retries": str(retries)}, why)


def revoked(job_id: str | None, task: str, *, expired: bool, terminated: bool) -> None:
    if expired:
        error = _error_json("Expired", "the job expired before a worker could start it")
    elif terminated:
        error = _error_json("Terminated", "the job was cancelled and terminated while running")
    else:
        error = _error_json("Revoked", "the job was cancelled")
    _safely(job_id, task, JobState.REVOKED, {"error": error})


def progressed(job_id: str, task: str, meta: Any) -> None:
    """Celery's free-form progress ``meta``, recorded as PROGRESS (best-effort, see below)."""
    fields = progress_fields(meta)
    _progress.write(job_id, task, fields, _progress_note(fields["progress"]))


def _progress_note(progress: str) -> str:
    """A progress report's timeline message: its own message, else how far it got."""
    report = records.loads(progress)
    if report.get("message"):
        return timeline.note(str(report["message"]))
    current, total = report["current"], report["total"]
    return f"{current:g}/{total:g}" if total else f"{current:g}"


class _HeldProgress:
    """Progress is best-effort: while Redis is unreachable a report is held, not retried.

    After a failed write, reports are held for ``PAUSE`` seconds without trying (a task
    reporting often must not wait out a reconnect on every report); the latest report of
    each job is kept (at most ``KEPT`` jobs) and written before that job's next change.
    """

    PAUSE = 1.0
    KEPT = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: OrderedDict[str, tuple[str, dict[str, str], str]] = OrderedDict()
        self._paused_until = 0.0

    def _hold(self, job_id: str, task: str, fields: dict[str, str], note: str) -> None:
        with self._lock:
            self._held[job_id] = (task, fields, note)
            self._held.move_to_end(job_id)
            while len(self._held) > self.KEPT:
                self._held.popitem(last=False)

    def write(self, job_id: str, task: str, fields: dict[str, str], note: str = "") -> None:
        if time.monotonic() < self._paused_until:
            self._hold(job_id, task, fields, note)
            return
        try:
            transition(job_id, JobState.PROGRESS, fields, task=task, note=note)
        except redis.RedisError as exc:
            self._paused_until = time.monotonic() + self.PAUSE
            self._hold(job_id, task, fields, note)
            logger.warning("progress of job %s held while Redis is unreachable: %s", job_id, exc)
        else:
            with self._lock:
                self._held.pop(job_id, None)

    def flush(self, job_id: str) -> None:
        """Write the job's held report, if any, before a change that follows it."""
        with self._lock:
            held = self._held.pop(job_id, None)
        if held is not None:
            transition(job_id, JobState.PROGRESS, held[1], task=held[0], note=held[2])


_progress = _HeldProgress()


class _LogWriter:
    """A running job's log lines (``JobContext.log``), one script call per line: stored
    with the record, streamed on the job's channel (:data:`tasks.core.timeline.LOG_SCRIPT`).

    Best-effort, as progress is: a task never fails for a line. While Redis is unreachable
    lines are dropped (counted in the worker's log) and none is tried for ``PAUSE`` seconds,
    so a task that logs often does not wait out a reconnect on every line.
    """

    PAUSE = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._script: tuple[redis.Redis, Any] | None = None
        self._paused_until = 0.0
        self.dropped = 0

    def _registered(self) -> Any:
        current = client()
        with self._lock:
            if self._script is None or self._script[0] is not current:
                self._script = (current, current.register_script(timeline.LOG_SCRIPT))
            return self._script[1]

    def write(self, job_id: str, message: str, level: int) -> str:
        """Returns 'ok', 'missing', the final state of a job that takes no more lines, or
        'dropped' while Redis is unreachable."""
        if time.monotonic() < self._paused_until:
            self.dropped += 1
            return "dropped"
        line = timeline.log_line(message, level, records.now())
        keys, args = timeline.log_args(job_id, [line], scripts.publish_command())
        try:
            return str(self._registered()(keys=keys, args=args))
        except redis.RedisError as exc:
            self._paused_until = time.monotonic() + self.PAUSE
            self.dropped += 1
            logger.warning(
                "a log line of job %s was dropped: Redis is unreachable: %s", job_id, exc
            )
            return "dropped"


_logs = _LogWriter()


def logged(job_id: str, message: str, level: int) -> str:
    """Store a log line of a running job and stream it to its watchers (best-effort)."""
    return _logs.write(job_id, message, level)


def progress_fields(meta: Any) -> dict[str, str]:
    """Map Celery's free-form ``meta`` (``{'current': 3, 'total': 10, ...}``) to Progress."""
    meta = dict(meta) if isinstance(meta, dict) else {"data": meta}
    current = _number(meta.pop("current", None)) or 0.0
    total = _number(meta.pop("total", None))
    percent = _number(meta.pop("percent", None))
    if percent is None and total:
        percent = round(100.0 * current / total, 4)
    message = meta.pop("message", None) or meta.pop("status", None)
    data = meta.pop("data", None)
    if meta:
        data = {**meta, **data} if isinstance(data, dict) else {**meta, "data": data}
    progress = {"current": current, "total": total, "percent": percent, "message": message}
    if data is not None:
        progress["data"] = data
    return {"progress": records.dumps(progress)}


def _number(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _error_json(kind: str, message: str) -> str:
    return records.dumps({"type": kind, "message": message})


def _safely(
    job_id: str | None, task: str, state: JobState, fields: dict[str, str], note: str = ""
) -> str | None:
    """Recording must not break the worker: a lost Redis is logged, the task still completes.

    A change a watcher must see (a final state, a retry) is tried again until Redis is back
    or ``JOBQL_REDIS_OUTAGE_TOLERANCE`` has passed: a Redis restart mid-job must not leave
    the job's record short of its outcome. Returns the update's outcome, or None when it
    was not recorded.
    """
    if not job_id:
        return None
    deadline = time.monotonic() + get_settings().redis_outage_tolerance
    pause = 0.1
    while True:
        try:
            _progress.flush(job_id)
            return transition(job_id, state, fields, task=task, note=note)
        except redis.RedisError as exc:
            if time.monotonic() + pause > deadline:
                logger.exception("could not record %s for job %s", state, job_id)
                return None
            logger.warning("%s of job %s not recorded yet, trying again: %s", state, job_id, exc)
            time.sleep(pause)
            pause = min(1.0, pause * 2)
