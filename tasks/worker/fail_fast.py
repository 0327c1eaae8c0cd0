"""``onFailure: FAIL_FAST``: once a step fails, every other step of its workflow not finished is
revoked and the running ones terminated, as ``cancelWorkflow(terminate: true)`` does, by the same
plan (:mod:`tasks.core.workflow_cancel`). The record writer (:func:`tasks.core.events.skip_rest`)
hands a workflow over once, from the failure that became its ``failedStep``, and in whichever
process recorded it: a pool process (the step's own hooks) or the worker itself (a poison
message). It is carried out on a thread of that process, so neither the failed run's hooks nor
the worker's consumer wait on the broadcasts and record moves.

If that process dies before the thread is done, the rest is left as ``WAIT`` would leave it:
the workflow is FAILURE already and done once its running steps end.
"""

from __future__ import annotations

import logging
import os
import threading
from queue import SimpleQueue

from tasks.core import events, records
from tasks.core.app import celery_app
from tasks.core.records import JobSnapshot, JobState
from tasks.core.workflow_cancel import Move, revocations
from tasks.core.workflow_records import WorkflowSnapshot, workflow_key

logger = logging.getLogger(__name__)

_lock = threading.Lock()
# This process's queue and the thread that empties it (a forked pool process starts its own).
_worker: tuple[int, SimpleQueue[tuple[str, str]]] | None = None


def hand_over(workflow_id: str, failed: str) -> None:
    """Stop the rest of ``workflow_id``, whose step ``failed`` failed, soon and off this thread."""
    global _worker
    with _lock:
        if _worker is None or _worker[0] != os.getpid():
            queue: SimpleQueue[tuple[str, str]] = SimpleQueue()
            threading.Thread(
                target=_serve, args=(queue,), name="jobql-fail-fast", daemon=True
            ).start()
            _worker = (os.getpid(), queue)
        _worker[1].put((workflow_id, failed))


def _serve(queue: SimpleQueue[tuple[str, str]]) -> None:
    while True:
        workflow_id, failed = queue.get()
        try:
            stop_rest(workflow_id, failed)
        except Exception:
            logger.exception("could not stop the rest of workflow %s (step %s failed)",
                             workflow_id, failed)  # fmt: skip


def stop_rest(workflow_id: str, failed: str) -> None:
    """Revoke every step of the workflow not finished: terminate the running ones, and the
    waiting ones (the record writer skipped those it saw already) never run."""
    steps = _steps(workflow_id)
    stopped = records.dumps(
        {"type": "Terminated", "message": f"step {failed} of the workflow failed (FAIL_FAST)"}
    )
    skipped = records.dumps({"type": "Skipped", "message": f"step {failed} of the workflow failed"})
    plan = revocations(steps, terminate=True)
    for revocation in plan:
        step = revocation.step
        try:
            if revocation.move is Move.TERMINATE:
                celery_app.control.revoke(step.id, terminate=True)
            elif revocation.move is Move.RECORD:
                events.transition(
                    step.id,
                    JobState.REVOKED,
                    {"error": stopped if revocation.running else skipped},
                    task=step.task,
                    allowed_from=revocation.allowed_from,
                    workflow=workflow_id,
                    owner=step.owner,
                )
            else:
                celery_app.control.revoke(step.id, terminate=False)
        except Exception as exc:
            # One step's broadcast or record move must not keep the others running.
            logger.warning("workflow %s: could not %s step %s: %s",
                           workflow_id, revocation.move.value, step.id, exc)  # fmt: skip
    stopped_count = sum(r.move is Move.RECORD for r in plan)
    logger.info("workflow %s failed fast: step %s failed, %d other step(s) revoked",
                workflow_id, failed, stopped_count)  # fmt: skip


def _steps(workflow_id: str) -> list[JobSnapshot]:
    """The workflow's steps as they are now, read at one instant (one MULTI)."""
    client = events.client()
    fields: dict[str, str] = client.hgetall(workflow_key(workflow_id))  # type: ignore[assignment]
    if not fields:
        return []
    with client.pipeline(transaction=True) as pipe:
        for step in WorkflowSnapshot.from_hash(fields).steps:
            pipe.hgetall(records.job_key(step))
        rows: list[dict[str, str]] = pipe.execute()
    return [JobSnapshot.from_hash(row) for row in rows if row]


events.fail_fast_sink = hand_over
