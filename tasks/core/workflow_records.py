"""The workflow record, one Redis hash per workflow beside its steps' job records: the API writes
it with every step's record in one script call (:mod:`tasks.core.scripts`), and from then on the
update script changes it in the same step as each step's record (the step's state and percent,
the aggregate state and progress, a ``sequence`` that grows by one per step change), so a
workflow's event always carries the step change that made it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from tasks.core import formats, slots
from tasks.core.records import PREFIX, dumps


class WorkflowState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"


class WorkflowFailure(StrEnum):
    """What a failed step does to the steps still running beside it (its record's
    ``on_failure``). Either way the workflow is FAILURE at once and no waiting step starts."""

    WAIT = "WAIT"  # they run to their end; the workflow is done after them
    FAIL_FAST = "FAIL_FAST"  # they are terminated; the workflow is done at once


WORKFLOW_KEY_PREFIX = f"{PREFIX}:workflow:"
WORKFLOW_CHANNEL_PREFIX = f"{PREFIX}:events:workflow:"


def workflow_key(workflow_id: str) -> str:
    """Tagged by the workflow's id; its steps are given ids on the same tag (one slot)."""
    return f"{WORKFLOW_KEY_PREFIX}{{{slots.tag_of(workflow_id)}}}:{workflow_id}"


def workflow_index_key(owner: str, tag: str) -> str:
    """An owner's workflows on ``tag``, scored by creation time in µs (``workflows`` pages
    it); on the workflow's own tag, so the record and its entry are written in one call."""
    return f"{PREFIX}:workflows:{{{tag}}}:{owner}"


def workflow_channel(workflow_id: str) -> str:
    return f"{WORKFLOW_CHANNEL_PREFIX}{{{slots.tag_of(workflow_id)}}}:{workflow_id}"


@dataclass(frozen=True, slots=True)
class WorkflowSnapshot:
    """One workflow as readers see it. ``steps`` are its job ids, in the order given;
    ``shape`` their tree (:func:`tasks.core.canvas.shape_of`), None in a record written
    before the record kept it."""

    id: str
    name: str
    owner: str
    state: WorkflowState
    done: bool
    sequence: int
    progress: float
    steps: list[str]
    weights: list[float]
    failed_step: str | None
    on_failure: WorkflowFailure
    created_at: datetime
    finished_at: datetime | None
    shape: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> WorkflowSnapshot:
        if fields.get(formats.FORMAT_FIELD) != formats.CURRENT:
            formats.met("workflow records", fields.get(formats.FORMAT_FIELD))
        steps = json.loads(fields["steps"])
        finished = fields.get("finished_at")
        shape = fields.get("shape")
        return cls(
            id=fields["id"],
            name=fields.get("name", ""),
            owner=fields["owner"],
            state=WorkflowState(fields["state"]),
            done=fields.get("done") == "1",
            sequence=int(fields.get("sequence") or 0),
            progress=float(fields.get("progress") or 0),
            steps=[str(step[0]) for step in steps],
            weights=[float(step[1]) for step in steps],
            failed_step=fields.get("failed_step") or None,
            # Records written before the option have none: they waited.
            on_failure=WorkflowFailure(fields.get("on_failure") or WorkflowFailure.WAIT),
            created_at=datetime.fromisoformat(fields["created_at"]),
            finished_at=datetime.fromisoformat(finished) if finished else None,
            shape=json.loads(shape) if shape else None,
        )


def new_workflow_record(
    *,
    workflow_id: str,
    name: str,
    owner: str,
    steps: list[tuple[str, float]],
    created_at: datetime,
    shape: dict[str, Any] | None = None,
    webhook: tuple[str, str] | None = None,
    on_failure: WorkflowFailure = WorkflowFailure.WAIT,
) -> dict[str, str]:
    """A PENDING workflow of ``steps`` (job id, weight) arranged as ``shape`` (the tree
    :func:`tasks.core.canvas.shape_of` gives); every step starts PENDING at 0%. The shape is
    a field of the record like the rest, so every event of the workflow carries it too."""
    fields = {
        "id": workflow_id,
        "name": name,
        "owner": owner,
        "state": WorkflowState.PENDING.value,
        "done": "0",
        "sequence": "0",
        "progress": "0",
        "steps": dumps([[job_id, weight] for job_id, weight in steps]),
        "failed_step": "",
        "on_failure": on_failure.value,
        "created_at": created_at.isoformat(),
        formats.FORMAT_FIELD: formats.CURRENT,
    }
    if shape is not None:
        fields["shape"] = dumps(shape)
    if webhook:
        fields["webhook_url"], fields["webhook_events"] = webhook
    return fields


def public_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The record without the per-step bookkeeping (``s:<id>``, ``p:<id>``)."""
    return {k: v for k, v in fields.items() if ":" not in k}
