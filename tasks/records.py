"""The job record: one Redis hash per job, shared by the API (async) and the worker (sync).

Every write goes through a Lua script so that the snapshot, its ``sequence`` and the event
announcing it change in one step: a reader never sees an event newer than the snapshot it
can read. Fields hold strings; JSON fields hold JSON text; an empty string means "not set".
"""

from __future__ import annotations

import json
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


# KEYS: job, index, idempotency ('' for none), queue ('' when the message goes elsewhere)
# ARGV: ttl, score, job id, job key prefix, message, job channel, owner channel,
#       snapshot JSON, field/value pairs...
# Returns nil when created, or the id of the job an idempotency key already points to.
# With a queue, the Celery message is pushed and the PENDING snapshot announced in the same
# step: the record, the message and the event exist together or not at all. Without one,
# the caller announces once its own broker took the message.
CREATE_SCRIPT = """
local ttl = tonumber(ARGV[1])
if KEYS[3] ~= '' then
  local existing = redis.call('GET', KEYS[3])
  if existing and redis.call('EXISTS', ARGV[4] .. existing) == 1 then
    return existing
  end
  redis.call('SET', KEYS[3], ARGV[3], 'EX', ttl)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ttl)
local score = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], score, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%d', score - ttl * 1000000))
redis.call('EXPIRE', KEYS[2], ttl)
if KEYS[4] ~= '' then
  redis.call('LPUSH', KEYS[4], ARGV[5])
  redis.call('PUBLISH', ARGV[6], ARGV[8])
  redis.call('PUBLISH', ARGV[7], ARGV[8])
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


def batch_script(single: str) -> str:
    """A script that runs ``single`` once per item of a batch, in one atomic call.

    The single script's body becomes a function of its own ``KEYS`` and ``ARGV``, so the
    batch never drifts from it. Layout: ``ARGV[1]`` is the number of items, then each
    item's key count and argument count, then every item's arguments in order; ``KEYS``
    are every item's keys in order. Returns one reply per item (false becomes '').
    """
    return (
        "local function one(KEYS, ARGV)\n"
        + single
        + """
end
local n = tonumber(ARGV[1])
local k, a = 1, 2 + 2 * n
local out = {}
for i = 1, n do
  local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local keys, args = {}, {}
  for j = 1, nk do keys[j] = KEYS[k + j - 1] end
  for j = 1, na do args[j] = ARGV[a + j - 1] end
  k, a = k + nk, a + na
  local reply = one(keys, args)
  out[i] = reply or ''
end
return out
"""
    )


def batch_call(calls: list[tuple[list[Any], list[Any]]]) -> tuple[list[Any], list[Any]]:
    """The ``(keys, args)`` of a :func:`batch_script` call from each item's own."""
    keys: list[Any] = [key for item_keys, _ in calls for key in item_keys]
    counts: list[Any] = [n for item_keys, args in calls for n in (len(item_keys), len(args))]
    args: list[Any] = [arg for _, item_args in calls for arg in item_args]
    return keys, [len(calls), *counts, *args]


CREATE_MANY_SCRIPT = batch_script(CREATE_SCRIPT)
