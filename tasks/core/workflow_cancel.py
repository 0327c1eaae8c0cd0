"""How a workflow's unfinished steps are revoked, decided in one place for the two that do it:
the API's ``cancelWorkflow`` (:class:`gql.services.workflows.WorkflowService`) and, under
``onFailure: FAIL_FAST``, the worker that recorded the failure (:mod:`tasks.worker.fail_fast`).
This module says which steps and in what order; each side carries the moves out with its own
clients (the API's async ones, the worker's blocking ones).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from tasks.core.records import CANCELLABLE_STATES, JobSnapshot, JobState


class Move(Enum):
    TERMINATE = "terminate"  # a revoke with terminate: the worker running it stops the run
    RECORD = "record"  # its record to REVOKED, from ``allowed_from`` only
    DROP = "drop"  # a plain revoke: a worker holding the message drops it (best effort)


@dataclass(frozen=True, slots=True)
class Revocation:
    move: Move
    step: JobSnapshot
    running: bool  # it had started when it was read

    @property
    def allowed_from(self) -> frozenset[JobState]:
        """A waiting step's record moves only while it still waits (one that started in the
        meantime runs on); a running one's from any state short of its end."""
        return frozenset() if self.running else CANCELLABLE_STATES


def revocations(steps: Iterable[JobSnapshot], *, terminate: bool) -> list[Revocation]:
    """The moves that revoke every step not finished, in order: waiting ones never run;
    running ones stop only with ``terminate`` (without it they finish, and nothing after
    them starts). A running step's run is stopped before its record says so; a waiting
    step's record comes first, since the record alone keeps any worker from running it
    (``JobTask.before_start``), and the plain revoke after it only saves that worker the
    look."""
    moves: list[Revocation] = []
    for step in steps:
        waiting = step.state in CANCELLABLE_STATES
        if step.done or not (waiting or terminate):
            continue
        if waiting:
            moves += [Revocation(Move.RECORD, step, False), Revocation(Move.DROP, step, False)]
        else:
            moves += [Revocation(Move.TERMINATE, step, True), Revocation(Move.RECORD, step, True)]
    return moves
