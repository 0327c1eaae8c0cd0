"""The job record: one Redis hash per job, shared by the API (async) and the worker (sync). Every
write goes through a Lua script (:mod:`tasks.core.scripts`), so the snapshot, its ``sequence``,
its indexes and the event announcing it change in one step and a reader never sees an event newer
than the snapshot it can read. Fields hold strings, JSON fields JSON text, and an empty string
means "not set".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson

from tasks.core import formats, slots

PREFIX = "jobql"


class JobState(StrEnum):
    PENDING = "PENDING"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"

    @property
    def done(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILURE, JobState.REVOKED})
# A job in one of these has a worker running it; started again, that run was lost.
RUNNING_STATES = frozenset({JobState.STARTED, JobState.PROGRESS})
CANCELLABLE_STATES = frozenset({JobState.PENDING, JobState.RETRY})

JOB_KEY_PREFIX = f"{PREFIX}:job:"
JOB_CHANNEL_PREFIX = f"{PREFIX}:events:job:"
OWNER_CHANNEL_PREFIX = f"{PREFIX}:events:owner:"
EVERY_OWNER_CHANNEL_PREFIX = f"{PREFIX}:events:all:"

# Every key and channel below carries a hash tag (see tasks.core.slots): one job's record, its
# owner's indexes of that tag and its events share one cluster slot.


def job_prefix(tag: str) -> str:
    """What a job key is made of before its id: the page script builds keys from it."""
    return f"{JOB_KEY_PREFIX}{{{tag}}}:"


def job_key(job_id: str) -> str:
    return job_prefix(slots.tag_of(job_id)) + job_id


def unsent_key(job_id: str) -> str:
    """Set when a job's enqueue was answered SERVICE_UNAVAILABLE and its record taken back:
    a worker that still gets its message (a late publish) skips it instead of adopting it."""
    return job_key(job_id) + ":unsent"


# The listing indexes: sorted sets of job ids scored by creation time in microseconds, one
# per owner and tag for all jobs, per state, per task and per (state, task), each changed
# in the same script as the record.


def owners_key(tag: str) -> str:
    """The owners that have jobs on ``tag``: where an admin's listing and the sweep look."""
    return f"{PREFIX}:owners:{{{tag}}}"


def index_key(
    owner: str, tag: str, *, state: JobState | None = None, task: str | None = None
) -> str:
    """The index of an owner's jobs on ``tag``, narrowed to one state and/or one task."""
    key = f"{PREFIX}:index:{{{tag}}}:{owner}"
    if state is not None:
        key += f":state:{state.value}"
    if task is not None:
        key += f":task:{task}"
    return key


def indexes_of(owner: str, task: str, tag: str) -> list[str]:
    """Every index a job of ``task`` may be in: all, task, then per state, per (state, task)."""
    return [
        index_key(owner, tag),
        index_key(owner, tag, task=task),
        *(index_key(owner, tag, state=state) for state in JobState),
        *(index_key(owner, tag, state=state, task=task) for state in JobState),
    ]


def expiry_key(owner: str, tag: str) -> str:
    """When each of the owner's records on ``tag`` expires: member ``expiry_member``, score µs."""
    return f"{PREFIX}:expiry:{{{tag}}}:{owner}"


def expiry_member(job_id: str, task: str) -> str:
    """What the sweep needs to name a job's indexes: its id and task."""
    return dumps([job_id, task])


def idempotency_tag(owner: str, key: str) -> str:
    """The tag of an idempotency key: the job it names is given an id on the same tag."""
    return slots.tag_of(f"{owner}\x00{key}")


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{{{idempotency_tag(owner, key)}}}:{owner}:{key}"


def job_channel(job_id: str) -> str:
    return f"{JOB_CHANNEL_PREFIX}{{{slots.tag_of(job_id)}}}:{job_id}"


def channels_of(job_id: str, owner: str) -> tuple[str, str, str]:
    """Where a job's events go out: its own channel, its owner's on its tag, and every
    owner's on its tag."""
    tag = slots.tag_of(job_id)
    return job_channel(job_id), owner_channel(owner, tag), every_owner_channel(tag)


def owner_channel(owner: str, tag: str) -> str:
    """An owner's events of the jobs on ``tag``: a watcher of every job listens on each tag."""
    return f"{OWNER_CHANNEL_PREFIX}{{{tag}}}:{owner}"


def every_owner_channel(tag: str) -> str:
    """Every owner's events of the jobs on ``tag``: an admin's ``jobs`` stream listens on
    each tag. A third PUBLISH per change, to a channel nobody hears unless an admin watches
    (Redis then looks it up and moves on); on a cluster, SPUBLISH on the job's own slot."""
    return f"{EVERY_OWNER_CHANNEL_PREFIX}{{{tag}}}"


def now() -> datetime:
    return datetime.now(UTC)


def to_score(moment: datetime) -> int:
    """Microseconds since the epoch: exact in a Redis score (below 2**53) and sortable."""
    return int(moment.timestamp() * 1_000_000)


def dumps(value: Any) -> str:
    """Compact JSON, non-ASCII kept. A record's fields and other flat strings (most of what
    is written per job) go through orjson, which writes them byte for byte the same;
    anything else through the standard library, whose floats and errors stay as they were."""
    if _all_strings(value):
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:  # a lone surrogate: json writes it, orjson refuses
            pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _all_strings(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and type(v) is str for k, v in value.items())
    if kind is list:
        return all(type(item) is str for item in value)
    return False


# orjson 3.x reads an integer beyond 64 bits as a float, which is at least this large.
_ROUNDED = 2.0**63


def loads(text: str | bytes) -> Any:
    """``json.loads``, exactly, at orjson's speed: a page decodes 50 records, each of
    them JSON holding JSON. What orjson refuses (``NaN``, ``1e400``, lone surrogates) or
    may have rounded (an integer beyond 64 bits) is read again by the standard library."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if _maybe_rounded(value) else value


def _maybe_rounded(value: Any) -> bool:
    """Whether a float orjson read is large enough to have been an integer it rounded."""
    kind = type(value)
    if kind is float:
        return not -_ROUNDED < value < _ROUNDED
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    for item in value:
        kind = type(item)
        if kind is float:
            if not -_ROUNDED < item < _ROUNDED:
                return True
        elif (kind is dict or kind is list) and _maybe_rounded(item):
            return True
    return False


def _loads(text: str | None) -> Any:
    return loads(text) if text else None


def _timeline(fields: dict[str, str]) -> str:
    """The record's timeline (tasks.core.timeline): ``events``, and ``events:2``... where
    it was too long for one field of a compact hash."""
    text = fields.get("events") or ""
    piece = 2
    while (more := fields.get(f"events:{piece}")) is not None:
        text += more
        piece += 1
    return text


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """One job as readers see it, decoded from its hash."""

    id: str
    task: str
    owner: str
    queue: str
    state: JobState
    sequence: int
    retries: int
    input: Any
    progress: dict[str, Any] | None
    result: Any
    error: dict[str, str] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    idempotency_key: str | None
    workflow_id: str | None = None
    # Deliveries: how many times a worker started the job, how many of those ended with
    # the worker lost (a killed pool child or worker), why it was last delivered again,
    # and the worker that started it last.
    attempts: int = 0
    lost: int = 0
    redelivery: str | None = None
    worker: str | None = None
    # The trace the job was enqueued in, with tracing on (tasks.core.tracing).
    trace_id: str | None = None
    # A run of a periodic schedule: the schedule's id and name (see tasks.core.schedules).
    schedule_id: str | None = None
    schedule: str | None = None
    # Only on an event of a workflow's channel: the workflow's record after this change.
    workflow: dict[str, str] | None = None
    # The timeline as stored (JSON text, read by tasks.core.timeline.entries), and how many
    # of the job's log lines were dropped, oldest first, past the bound.
    events: str = ""
    logs_dropped: int = 0

    @property
    def done(self) -> bool:
        return self.state.done

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> JobSnapshot:
        if fields.get(formats.FORMAT_FIELD) != formats.CURRENT:
            formats.met("job records", fields.get(formats.FORMAT_FIELD))
        created = _moment(fields.get("created_at"))
        assert created is not None, "a job record always has created_at"
        return cls(
            id=fields["id"],
            task=fields["task"],
            owner=fields["owner"],
            queue=fields.get("queue", ""),
            state=JobState(fields["state"]),
            sequence=int(fields.get("sequence") or 0),
            retries=int(fields.get("retries") or 0),
            input=_loads(fields.get("input")),
            progress=_loads(fields.get("progress")),
            result=_loads(fields.get("result")),
            error=_loads(fields.get("error")),
            created_at=created,
            started_at=_moment(fields.get("started_at")),
            finished_at=_moment(fields.get("finished_at")),
            idempotency_key=fields.get("idempotency_key") or None,
            workflow_id=fields.get("workflow_id") or None,
            attempts=int(fields.get("attempts") or 0),
            lost=int(fields.get("lost") or 0),
            redelivery=fields.get("redelivery") or None,
            worker=fields.get("worker") or None,
            trace_id=fields.get("trace_id") or None,
            schedule_id=fields.get("schedule_id") or None,
            schedule=fields.get("schedule") or None,
            events=_timeline(fields),
            logs_dropped=int(fields.get("logs_dropped") or 0),
        )

    @classmethod
    def from_event(cls, payload: str | bytes) -> JobSnapshot:
        """Events carry the whole snapshot, JSON-encoded by the update script; a step's
        event on its workflow's channel carries the workflow's record too."""
        fields = loads(payload)
        snapshot = cls.from_hash(fields)
        workflow = fields.get("workflow")
        if isinstance(workflow, dict):
            object.__setattr__(snapshot, "workflow", workflow)
        return snapshot


def new_record(
    *,
    job_id: str,
    task: str,
    owner: str,
    queue: str,
    input_json: Any,
    created_at: datetime,
    idempotency: str | None = None,
    workflow_id: str | None = None,
    webhook: tuple[str, str] | None = None,
    schedule: tuple[str, str] | None = None,
    trace_id: str | None = None,
) -> dict[str, str]:
    """A PENDING record; ``webhook`` is (url, events) with events comma-separated,
    ``schedule`` the (id, name) of the schedule this job is a run of, ``trace_id`` the trace
    it was enqueued in.

    The workflow, webhook, schedule and trace fields are written only when set: most jobs
    have none.
    """
    fields = {
        "id": job_id,
        "task": task,
        "owner": owner,
        "queue": queue,
        "state": JobState.PENDING.value,
        "sequence": "0",
        "retries": "0",
        "input": dumps(input_json),
        "created_at": created_at.isoformat(),
        "idempotency_key": idempotency or "",
        "events": queued_entry(created_at),
        formats.FORMAT_FIELD: formats.CURRENT,
    }
    if workflow_id:
        fields["workflow_id"] = workflow_id
    if webhook:
        fields["webhook_url"], fields["webhook_events"] = webhook
    if schedule:
        fields["schedule_id"], fields["schedule"] = schedule
    if trace_id:
        fields["trace_id"] = trace_id
    return fields


def queued_entry(created_at: datetime) -> str:
    """A new record's timeline (tasks.core.timeline): queued (state 0) when it was created,
    in milliseconds since the epoch."""
    return f"[[{to_score(created_at) // 1000},0]]"


def unsent(fields: dict[str, str]) -> dict[str, str]:
    """The last snapshot of a job whose message the broker did not take.

    A job is announced before its message is sent (a fast worker's STARTED must never reach
    a watcher before the PENDING it follows); when the send then fails, this REVOKED
    snapshot, one sequence later, tells whoever saw the PENDING that the job will never run,
    and its record is taken away.
    """
    return {
        **fields,
        "state": JobState.REVOKED.value,
        "sequence": str(int(fields.get("sequence") or 0) + 1),
        "finished_at": now().isoformat(),
        "error": dumps({"type": "NotSent", "message": "the broker did not take the job's message"}),
    }


def flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


class ResultTooLarge(Exception):
    """A job's result is larger than ``JOBQL_MAX_RESULT_BYTES``: the job fails unwritten."""


def checked_json(result: Any, limit: int) -> str:
    """The result as the job record stores it; raises :class:`ResultTooLarge` over ``limit``."""
    payload = json.dumps(result, default=str, separators=(",", ":"))
    size = len(payload.encode())
    if size > limit:
        raise ResultTooLarge(
            f"the result is {size} bytes of JSON, more than JOBQL_MAX_RESULT_BYTES ({limit}); "
            "store large outputs elsewhere and return a reference"
        )
    return payload
