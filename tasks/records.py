"""The job record: one Redis hash per job, shared by the API (async) and the worker (sync).

Every write goes through a Lua script so that the snapshot, its ``sequence`` and the event
announcing it change in one step: a reader never sees an event newer than the snapshot it
can read. Fields hold strings; JSON fields hold JSON text; an empty string means "not set".
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

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
CANCELLABLE_STATES = frozenset({JobState.PENDING, JobState.RETRY})

JOB_KEY_PREFIX = f"{PREFIX}:job:"
JOB_CHANNEL_PREFIX = f"{PREFIX}:events:job:"
OWNER_CHANNEL_PREFIX = f"{PREFIX}:events:owner:"


def job_key(job_id: str) -> str:
    return JOB_KEY_PREFIX + job_id


def index_key(owner: str) -> str:
    """Every job of one owner, scored by creation time in microseconds."""
    return f"{PREFIX}:index:{owner}"


def idempotency_key(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{owner}:{key}"


def job_channel(job_id: str) -> str:
    return JOB_CHANNEL_PREFIX + job_id


def owner_channel(owner: str) -> str:
    return OWNER_CHANNEL_PREFIX + owner


def now() -> datetime:
    return datetime.now(UTC)


def to_score(moment: datetime) -> int:
    """Microseconds since the epoch: exact in a Redis score (below 2**53) and sortable."""
    return int(moment.timestamp() * 1_000_000)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


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

    @property
    def done(self) -> bool:
        return self.state.done

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> JobSnapshot:
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
        )

    @classmethod
    def from_event(cls, payload: str | bytes) -> JobSnapshot:
        """Events carry the whole snapshot, JSON-encoded by the update script."""
        return cls.from_hash(json.loads(payload))


def new_record(
    *,
    job_id: str,
    task: str,
    owner: str,
    queue: str,
    input_json: Any,
    created_at: datetime,
    idempotency: str | None = None,
) -> dict[str, str]:
    return {
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
    }


def flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script call, built once for the sync and the async client."""

    keys: list[str]
    args: list[str | int]


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of an owner's jobs, newest first, after an optional ``(score, id)`` cursor."""

    owner: str
    limit: int
    after: tuple[int, str] | None = None
    states: frozenset[JobState] = frozenset()
    task: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def create_call(
    fields: dict[str, str],
    *,
    ttl: int,
    idempotency: str | None = None,
    message: tuple[str, str] | None = None,
) -> ScriptCall:
    """Write the new record ``fields``; with ``message`` (queue key, body) push it and announce."""
    job_id, owner = fields["id"], fields["owner"]
    queue, body = message or ("", "")
    return ScriptCall(
        keys=[
            job_key(job_id),
            index_key(owner),
            idempotency_key(owner, idempotency) if idempotency else "",
            queue,
        ],
        args=[
            ttl,
            to_score(datetime.fromisoformat(fields["created_at"])),
            job_id,
            body,
            job_channel(job_id),
            owner_channel(owner),
            dumps(fields) if message else "",
            *flatten(fields),
        ],
    )


def update_call(
    job_id: str,
    state: JobState,
    fields: dict[str, str] | None = None,
    *,
    ttl: int,
    allowed_from: Collection[JobState] = (),
    at: datetime | None = None,
) -> ScriptCall:
    """Move a job to ``state`` (from one of ``allowed_from``, or any state not yet final)."""
    return ScriptCall(
        keys=[job_key(job_id)],
        args=[
            ttl,
            state.value,
            (at or now()).isoformat(),
            job_channel(job_id),
            OWNER_CHANNEL_PREFIX,
            ",".join(sorted(allowed_from)),
            *flatten(fields or {}),
        ],
    )


def page_call(query: PageQuery, *, scan_cap: int = 10_000) -> ScriptCall:
    high: str | int = "+inf"
    if query.created_before is not None:
        high = f"({to_score(query.created_before)}"
    if query.after is not None:
        after_score = query.after[0]
        if query.created_before is None or after_score < to_score(query.created_before):
            high = after_score
    low = f"({to_score(query.created_after)}" if query.created_after is not None else "-inf"
    return ScriptCall(
        keys=[index_key(query.owner)],
        args=[
            high,
            low,
            query.after[0] if query.after else "",
            query.after[1] if query.after else "",
            query.limit,
            ",".join(sorted(query.states)),
            query.task or "",
            JOB_KEY_PREFIX,
            scan_cap,
        ],
    )


# KEYS: job, index, idempotency ('' for none), queue ('' when the message goes elsewhere)
# ARGV: ttl, score, job id, message, job channel, owner channel, snapshot JSON,
#       field/value pairs...
# Returns nil when created, or the id of the job an idempotency key already points to
# (the key expires with the job's creation + ttl, the job no earlier, so it is still there
# unless it was deleted by hand; the API answers NOT_FOUND then).
# With a queue, the Celery message is pushed and the PENDING snapshot announced in the same
# step: the record, the message and the event exist together or not at all. Without one,
# the caller announces once its own broker took the message.
CREATE_SCRIPT = """
local ttl = tonumber(ARGV[1])
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing then return existing end
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ttl)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('EXPIRE', KEYS[1], ttl)
local score = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], score, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', score - ttl * 1000000))
redis.call('EXPIRE', KEYS[2], ttl)
if KEYS[4] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[7])
  redis.call('PUBLISH', ARGV[6], ARGV[7])
end
return false
"""

# KEYS: job
# ARGV: ttl, new state, now (ISO), job channel, owner channel prefix,
#       states it may move from (comma-separated; '' means any state not yet terminal),
#       field/value pairs...
# Returns 'ok', 'missing', or the current state when the move is refused. A terminal state
# is final: a late progress report or a late STARTED never overwrites it.
UPDATE_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED' then return state end
if ARGV[6] ~= '' and not string.find(',' .. ARGV[6] .. ',', ',' .. state .. ',', 1, true) then
  return state
end
local new = ARGV[2]
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
redis.call('HSET', KEYS[1], 'state', new)
if new == 'STARTED' then redis.call('HSETNX', KEYS[1], 'started_at', ARGV[3]) end
if new == 'SUCCESS' or new == 'FAILURE' or new == 'REVOKED' then
  redis.call('HSET', KEYS[1], 'finished_at', ARGV[3])
end
redis.call('HINCRBY', KEYS[1], 'sequence', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
local flat = redis.call('HGETALL', KEYS[1])
local snap = {}
for i = 1, #flat, 2 do snap[flat[i]] = flat[i + 1] end
local payload = cjson.encode(snap)
redis.call('PUBLISH', ARGV[4], payload)
redis.call('PUBLISH', ARGV[5] .. snap['owner'], payload)
return 'ok'
"""

# KEYS: index
# ARGV: max score, min score, after score ('' for none), after id, limit, states
#       (comma-separated, '' for any), task ('' for any), job key prefix, scan cap
# Returns up to ``limit`` JSON-encoded records, newest first, read in this one call.
# Entries whose record expired are dropped from the index on the way.
# The job hashes are read by names computed here (prefix .. id): they cannot be declared,
# since the ids are only learnt inside the script and a page must stay one round trip.
# This is the one undeclared access; on a Redis Cluster it would need the job keys to
# share the owner's hash tag with the index.
PAGE_SCRIPT = """
local limit = tonumber(ARGV[5])
local cap = tonumber(ARGV[9])
local after_score = ARGV[3] ~= '' and tonumber(ARGV[3]) or nil
local states = ARGV[6] ~= '' and (',' .. ARGV[6] .. ',') or nil
local out, gone = {}, {}
local offset, scanned, batch = 0, 0, math.max(limit, 50)
while #out < limit and scanned < cap do
  local rows = redis.call('ZREVRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2],
                          'WITHSCORES', 'LIMIT', offset, batch)
  if #rows == 0 then break end
  for i = 1, #rows, 2 do
    local id, score = rows[i], tonumber(rows[i + 1])
    scanned = scanned + 1
    if not (after_score and score == after_score and id >= ARGV[4]) then
      local flat = redis.call('HGETALL', ARGV[8] .. id)
      if #flat == 0 then
        gone[#gone + 1] = id
      else
        local rec = {}
        for j = 1, #flat, 2 do rec[flat[j]] = flat[j + 1] end
        if (not states or string.find(states, ',' .. rec['state'] .. ',', 1, true))
           and (ARGV[7] == '' or rec['task'] == ARGV[7]) then
          out[#out + 1] = cjson.encode(rec)
          if #out >= limit then break end
        end
      end
    end
  end
  offset = offset + batch
end
if #gone > 0 then redis.call('ZREM', KEYS[1], unpack(gone)) end
return out
"""
