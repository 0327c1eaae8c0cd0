"""A job's record read as Celery's result meta, so a finished job's outcome is stored once: the
worker's Redis result backend (:mod:`tasks.worker.results`) writes the outcome of a job it ran
into the job's record, not into a ``celery-task-meta-`` key of its own, and serves
``AsyncResult`` (``state``, ``result``, ``get()``, ``traceback``, a chord's join) from the record
when no such key exists. A failure keeps what Celery needs to raise the same exception again
(its type, module, arguments and traceback) in one field of the record, ``celery_error``, that
only failed jobs carry.
"""

from __future__ import annotations

from typing import Any

from tasks.core import records
from tasks.core.records import JobState

# The record's fields the meta is made of, in the order :func:`meta_of` reads them.
FIELDS = (
    "state",
    "task",
    "result",
    "error",
    CELERY_ERROR := "celery_error",
    "progress",
    "finished_at",
    "retries",
    "worker",
    "queue",
    "input",
)


def error_field(error: dict[str, Any], trace: str | None) -> str:
    """The ``celery_error`` field of a failed job: Celery's own description of the exception
    (``exc_type``, ``exc_message``, ``exc_module``, as its backend prepares it) and the
    traceback's text."""
    return records.dumps({**error, "traceback": trace})


def meta_of(task_id: str, values: list[str | None]) -> dict[str, Any] | None:
    """Celery's result meta of a job from its record's :data:`FIELDS` (an HMGET's answer), or
    None where Celery would find nothing: no record, or one still PENDING."""
    fields = dict(zip(FIELDS, values, strict=True))
    state = fields["state"]
    if not state or state == JobState.PENDING:
        return None
    trace = None
    result: Any = None
    if state == JobState.SUCCESS:
        result = records.loads(fields["result"]) if fields["result"] else None
    elif state in (JobState.FAILURE, JobState.REVOKED):
        result, trace = _exception(state, fields)
    elif state == JobState.PROGRESS:
        result = records.loads(fields["progress"]) if fields["progress"] else None
    elif state == JobState.STARTED:
        result = {"hostname": fields["worker"] or None}
    return {
        "status": state,
        "result": result,
        "traceback": trace,
        "children": [],
        "date_done": fields["finished_at"] or None,
        "task_id": task_id,
        "name": fields["task"],
        "args": [],
        "kwargs": records.loads(fields["input"]) if fields["input"] else {},
        "worker": fields["worker"] or None,
        "retries": int(fields["retries"] or 0),
        "queue": fields["queue"] or None,
    }


def _exception(state: str, fields: dict[str, str | None]) -> tuple[dict[str, Any], str | None]:
    """Celery's exception dict of a failed or revoked job, and its traceback."""
    if fields[CELERY_ERROR]:
        stored = records.loads(fields[CELERY_ERROR])  # type: ignore[arg-type]
        trace = stored.pop("traceback", None)
        return stored, trace
    error = records.loads(fields["error"]) if fields["error"] else {}
    message = str(error.get("message", ""))
    if state == JobState.REVOKED:
        exc = {"exc_type": "TaskRevokedError", "exc_module": "celery.exceptions"}
        return {**exc, "exc_message": [message]}, None
    # Recorded without Celery's description (a worker lost, a message no worker can run): the
    # type's name only, which Celery makes an exception class of that name.
    return {"exc_type": str(error.get("type") or "Error"), "exc_message": [message]}, None
