"""The Lua scripts that write and read job records, and one builder per script call returning its
KEYS and ARGV, used as they are by the worker's sync client and the API's async one. Every key a
script writes is declared in KEYS (the page and sweep comments name the one kind of read that
cannot be), and the listing indexes (:func:`tasks.core.records.index_key`) change in the same
script as the record, so a page is exact and costs O(k * limit * log N) for k sets, whatever N is
stored.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasks.core import slots
from tasks.core.records import (
    PREFIX,
    JobState,
    dumps,
    every_owner_channel,
    expiry_key,
    expiry_member,
    flatten,
    idempotency_key,
    idempotency_tag,
    index_key,
    indexes_of,
    job_channel,
    job_key,
    job_prefix,
    now,
    owner_channel,
    owners_key,
    to_score,
    unsent_key,
)
from tasks.core.timeline import LOGS_SUFFIX, TIMELINE_LUA
from tasks.core.workflow_records import workflow_channel, workflow_index_key, workflow_key

_MICROS = 1_000_000


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """The KEYS and ARGV of one script call."""

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


# KEYS: job, all, task, PENDING, (PENDING, task), expiry, owners,
#       idempotency (the job's key for none), queue (the job's key when the message goes
#       elsewhere): an absent key repeats KEYS[1], since a cluster hashes even '' to a slot
# ARGV: ttl, score, job id, message, job channel, owner channel, snapshot JSON, owner,
#       expires at (µs), expiry member, publish command, every owner's channel,
#       field/value pairs...
# Every key but the queue carries the job's hash tag (tasks.core.slots): one slot; the queue is
# there only when the broker is this same single Redis.
# Returns nil when created, or the id of the job an idempotency key already points to
# (the key expires with the job's creation + ttl, the job no earlier, so it is still there
# unless it was deleted by hand; the API answers NOT_FOUND then).
# With a queue, the Celery message is pushed and the PENDING snapshot announced in the same
# step: the record, its indexes, the message and the event exist together or not at all.
# Without one, the caller announces once its own broker took the message.
CREATE_SCRIPT = """
local ttl = tonumber(ARGV[1])
if KEYS[8] ~= KEYS[1] then
  local existing = redis.call('GET', KEYS[8])
  if existing then return existing end
  redis.call('SET', KEYS[8], ARGV[3], 'EX', ttl)
end
redis.call('HSET', KEYS[1], unpack(ARGV, 13))
redis.call('EXPIRE', KEYS[1], ttl)
for i = 2, 5 do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[3]) end
redis.call('ZADD', KEYS[6], ARGV[9], ARGV[10])
redis.call('SADD', KEYS[7], ARGV[8])
if KEYS[9] ~= KEYS[1] then
  redis.call('LPUSH', KEYS[9], ARGV[4])
  redis.call(ARGV[11], ARGV[5], ARGV[7])
  redis.call(ARGV[11], ARGV[6], ARGV[7])
  redis.call(ARGV[11], ARGV[12], ARGV[7])
end
return false
"""

# KEYS: job, all, task, expiry, then the 7 state indexes and the 7 (state, task) indexes
#       in JobState's order, then the job's workflow (the job's key for none), then the
#       job's log lines (tasks.core.timeline.logs_key)
# ARGV: ttl, new state, now (ISO), job id, job channel, owner channel,
#       states it may move from (comma-separated; '' means any state not yet terminal),
#       owner, task, expires at (µs: now + ttl, so now is known to the ms), expiry member,
#       workflow id ('' for none), workflow channel, publish command (PUBLISH, or SPUBLISH
#       on a cluster), every owner's channel, the timeline entry's message ('' for none),
#       field/value pairs...
# Every key and channel carries the job's hash tag; a workflow's steps share its tag.
# Returns 'ok', 'missing', the current state when the move is refused, {'moved', owner,
# task, workflow} when the record's differ from those the keys were built for (the caller
# retries with them), or {'hook', job event, workflow event} when the move is done and a
# webhook asked for it ('' for the one that did not). A terminal state is final: a late
# progress report or a late STARTED never overwrites it. Every STARTED counts an attempt;
# one that finds the job still running counts the previous run as lost with its worker.
# The record's TTL restarts with every change, and so do its expiry entry's and, when it has
# log lines (its ``logs_dropped`` field is set from the first), their list's.
# Every change adds an entry to the record's timeline (tasks.core.timeline), in this call.
# A step of a workflow changes the workflow in the same step: its state and percent, the
# aggregate state and progress, the workflow's sequence, and one event on the workflow's
# channel (the step's snapshot, carrying the workflow's record as ``workflow``).
UPDATE_SCRIPT = (
    TIMELINE_LUA
    + """
local slot = {__STATE_SLOTS__}
local function record(key)
  local flat = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #flat, 2 do out[flat[i]] = flat[i + 1] end
  return out
end
local snap = record(KEYS[1])
local state = snap['state']
if not state then return 'missing' end
local workflow = snap['workflow_id'] or ''
if snap['owner'] ~= ARGV[8] or snap['task'] ~= ARGV[9] or workflow ~= ARGV[12] then
  return {'moved', snap['owner'] or false, snap['task'] or false, workflow}
end
if state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED' then return state end
if ARGV[7] ~= '' and not string.find(',' .. ARGV[7] .. ',', ',' .. state .. ',', 1, true) then
  return state
end
local new = ARGV[2]
-- One HSET: the caller's fields, then those computed here (which win, as they came last);
-- snap is kept equal to the hash, so it is the snapshot without reading the hash again.
local set = {}
local function put(field, value)
  set[#set + 1] = field
  set[#set + 1] = value
  snap[field] = value
end
local worker_before, note = snap['worker'] or '', ARGV[16]
for i = 17, #ARGV, 2 do put(ARGV[i], ARGV[i + 1]) end
put('state', new)
if new == 'STARTED' then
  if not snap['started_at'] then put('started_at', ARGV[3]) end
  put('attempts', tostring((tonumber(snap['attempts']) or 0) + 1))
  if state == 'STARTED' or state == 'PROGRESS' then
    put('lost', tostring((tonumber(snap['lost']) or 0) + 1))
    put('redelivery', 'worker lost: a run ended without an outcome')
    if note == '' then note = snap['redelivery'] end
  end
end
if new == 'SUCCESS' or new == 'FAILURE' or new == 'REVOKED' then put('finished_at', ARGV[3]) end
local at = math.floor((tonumber(ARGV[10]) - tonumber(ARGV[1]) * 1000000) / 1000)
local stale = write_timeline(snap, put, slot[new], at, tonumber(snap['attempts']) or 0,
                             worker_before, snap['worker'] or '', note, new == 'STARTED')
put('sequence', tostring((tonumber(snap['sequence']) or 0) + 1))
redis.call('HSET', KEYS[1], unpack(set))
if #stale > 0 then redis.call('HDEL', KEYS[1], unpack(stale)) end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[1]))
if snap['logs_dropped'] then redis.call('EXPIRE', KEYS[20], tonumber(ARGV[1])) end
if new ~= state then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[4])
  if score then
    redis.call('ZREM', KEYS[5 + slot[state]], ARGV[4])
    redis.call('ZREM', KEYS[12 + slot[state]], ARGV[4])
    redis.call('ZADD', KEYS[5 + slot[new]], score, ARGV[4])
    redis.call('ZADD', KEYS[12 + slot[new]], score, ARGV[4])
  end
end
redis.call('ZADD', KEYS[4], ARGV[10], ARGV[11])
local function wants(events, changed, reached)
  if not events or events == '' or not changed then return false end
  if events == 'ANY' then return true end
  return string.find(',' .. events .. ',', ',' .. reached .. ',', 1, true) ~= nil
end
local payload = cjson.encode(snap)
redis.call(ARGV[14], ARGV[5], payload)
redis.call(ARGV[14], ARGV[6], payload)
redis.call(ARGV[14], ARGV[15], payload)
local job_hook = ''
if wants(snap['webhook_events'], new ~= state, new) then job_hook = payload end
local flow_hook = ''
if KEYS[19] ~= KEYS[1] and redis.call('EXISTS', KEYS[19]) == 1 then
  local wf = KEYS[19]
  local percent = 0
  if snap['progress'] and snap['progress'] ~= '' then
    local ok, p = pcall(cjson.decode, snap['progress'])
    if ok and type(p) == 'table' and type(p['percent']) == 'number' then percent = p['percent'] end
  end
  redis.call('HSET', wf, 's:' .. ARGV[4], new, 'p:' .. ARGV[4], percent)
  if new == 'FAILURE' and redis.call('HGET', wf, 'failed_step') == '' then
    redis.call('HSET', wf, 'failed_step', ARGV[4])
  end
  local flow = record(wf)
  local total, got = 0, 0
  local all_done, all_success, moved, revoked = true, true, false, false
  for _, step in ipairs(cjson.decode(flow['steps'])) do
    local s, w = flow['s:' .. step[1]] or 'PENDING', tonumber(step[2])
    total = total + w
    if s == 'SUCCESS' or s == 'FAILURE' or s == 'REVOKED' then
      got = got + w
    else
      all_done = false
      got = got + w * (tonumber(flow['p:' .. step[1]]) or 0) / 100
    end
    if s ~= 'SUCCESS' then all_success = false end
    if s ~= 'PENDING' then moved = true end
    if s == 'REVOKED' then revoked = true end
  end
  local was = flow['state']
  local now_state = 'PENDING'
  if flow['failed_step'] ~= '' then now_state = 'FAILURE'
  elseif all_success then now_state = 'SUCCESS'
  elseif revoked then now_state = 'REVOKED'
  elseif moved then now_state = 'RUNNING' end
  local progress = 0
  if total > 0 then progress = math.floor(10000 * got / total + 0.5) / 100 end
  redis.call('HSET', wf, 'state', now_state, 'progress', progress, 'done', all_done and '1' or '0')
  if all_done and (flow['finished_at'] or '') == '' then
    redis.call('HSET', wf, 'finished_at', ARGV[3])
  end
  redis.call('HINCRBY', wf, 'sequence', 1)
  redis.call('EXPIRE', wf, tonumber(ARGV[1]))
  flow = record(wf)
  for k in pairs(flow) do
    if string.find(k, ':', 1, true) then flow[k] = nil end
  end
  snap['workflow'] = flow
  redis.call(ARGV[14], ARGV[13], cjson.encode(snap))
  if wants(flow['webhook_events'], now_state ~= was, now_state) then
    flow_hook = cjson.encode(flow)
  end
end
if job_hook ~= '' or flow_hook ~= '' then return {'hook', job_hook, flow_hook} end
return 'ok'
""".replace("__STATE_SLOTS__", ", ".join(f"{s.value} = {i}" for i, s in enumerate(JobState)))
)

# KEYS: the indexes to merge (one per state asked for, or the task's, or all), of one tag
# ARGV: upper bound (a ZRANGEBYSCORE bound), cursor id ('' for none: with one, the bound is
#       the cursor's score and only ids below the cursor's are taken at that score),
#       lower bound, limit, job key prefix of that tag
# Returns up to ``limit`` records as HGETALL gives them (flat field/value lists: no JSON to
# encode here, none to decode in the API), newest first by (score, id), read in this one
# call: a k-way merge, each index read ``limit + 1`` at a time from its own position.
# An entry whose record expired is dropped from the index it was read from and the merge
# reads on, so the page is exact before the sweep has run; there is no scan cap.
# The job hashes are read by names computed here (prefix .. id): they cannot be declared,
# since the ids are only learnt inside the script and a page must stay one round trip.
# They carry the tag of the declared indexes, so they are in the same slot: a Redis
# Cluster runs the script where that slot lives (and refuses a key of any other slot).
# With several tags, the API calls this once per tag and merges the pages (tasks.core.slots).
PAGE_SCRIPT = """
local limit = tonumber(ARGV[4])
local low, batch = ARGV[3], limit + 1
local sets = {}
for i = 1, #KEYS do
  sets[i] = {key = KEYS[i], hi = ARGV[1], hid = ARGV[2], rows = {}, pos = 1, ended = false}
end
local function refill(s)
  local offset = 0
  while true do
    local rows = redis.call('ZREVRANGEBYSCORE', s.key, s.hi, low, 'WITHSCORES',
                            'LIMIT', offset, batch)
    local fresh = {}
    local tie = s.hid ~= '' and tonumber(s.hi)
    for i = 1, #rows, 2 do
      if not (tie and tonumber(rows[i + 1]) == tie and rows[i] >= s.hid) then
        fresh[#fresh + 1] = {rows[i + 1], rows[i]}
      end
    end
    s.ended = #rows < 2 * batch
    if #fresh > 0 or s.ended then
      s.rows, s.pos = fresh, 1
      return
    end
    offset = offset + batch
  end
end
local function newer(a, b)
  local x, y = tonumber(a[1]), tonumber(b[1])
  return x > y or (x == y and a[2] > b[2])
end
local out = {}
while #out < limit do
  local best
  for _, s in ipairs(sets) do
    if s.pos > #s.rows and not s.ended then refill(s) end
    if s.pos <= #s.rows and (not best or newer(s.rows[s.pos], best.rows[best.pos])) then
      best = s
    end
  end
  if not best then break end
  local row = best.rows[best.pos]
  best.pos = best.pos + 1
  best.hi, best.hid = row[1], row[2]
  local flat = redis.call('HGETALL', ARGV[5] .. row[2])
  if #flat == 0 then
    redis.call('ZREM', best.key, row[2])
  else
    out[#out + 1] = flat
  end
end
return out
"""

# KEYS: job, expiry, then every index of the job (see records.indexes_of)
# ARGV: job id, expiry member
# Returns 1 when the job's record is gone and it left every index, 0 when it still lives.
SWEEP_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


def _expires_at(moment: datetime, ttl: int) -> int:
    return to_score(moment) + ttl * _MICROS


def publish_command() -> str:
    """SPUBLISH on a cluster: an event goes to its slot's shard, not to every node."""
    return "SPUBLISH" if slots.current().sharded_pubsub else "PUBLISH"


def create_call(
    fields: dict[str, str],
    *,
    ttl: int,
    idempotency: str | None = None,
    message: tuple[str, str] | None = None,
) -> ScriptCall:
    """Write the new record ``fields``; with ``message`` (queue key, body) push it and announce."""
    job_id, owner, task = fields["id"], fields["owner"], fields["task"]
    tag = slots.tag_of(job_id)
    if idempotency and idempotency_tag(owner, idempotency) != tag:
        raise ValueError(f"job {job_id} is not on its idempotency key's tag")
    created = datetime.fromisoformat(fields["created_at"])
    queue, body = message or ("", "")
    job = job_key(job_id)
    return ScriptCall(
        keys=[
            job,
            index_key(owner, tag),
            index_key(owner, tag, task=task),
            index_key(owner, tag, state=JobState.PENDING),
            index_key(owner, tag, state=JobState.PENDING, task=task),
            expiry_key(owner, tag),
            owners_key(tag),
            idempotency_key(owner, idempotency) if idempotency else job,
            queue or job,
        ],
        args=[
            ttl,
            to_score(created),
            job_id,
            body,
            job_channel(job_id),
            owner_channel(owner, tag),
            dumps(fields) if message else "",
            owner,
            _expires_at(now(), ttl),
            expiry_member(job_id, task),
            publish_command(),
            every_owner_channel(tag),
            *flatten(fields),
        ],
    )


def update_call(
    job_id: str,
    state: JobState,
    fields: dict[str, str] | None = None,
    *,
    owner: str,
    task: str,
    ttl: int,
    allowed_from: Collection[JobState] = (),
    workflow: str = "",
    note: str = "",
) -> ScriptCall:
    """Move a job of ``owner``, ``task`` and ``workflow`` to ``state`` (from ``allowed_from``,
    or any state not yet final); the script answers with the right ones if these are wrong.
    ``note``: the message of the change's timeline entry (a retry's error, a progress
    message), made by :func:`tasks.core.timeline.note`."""
    moment = now()
    tag = slots.tag_of(job_id)
    job = job_key(job_id)
    return ScriptCall(
        keys=[
            job,
            *_update_indexes(owner, task, tag),
            workflow_key(workflow) if workflow else job,
            job + LOGS_SUFFIX,
        ],
        args=[
            ttl,
            state.value,
            moment.isoformat(),
            job_id,
            job_channel(job_id),
            owner_channel(owner, tag),
            ",".join(sorted(allowed_from)),
            owner,
            task,
            _expires_at(moment, ttl),
            expiry_member(job_id, task),
            workflow,
            workflow_channel(workflow) if workflow else "",
            publish_command(),
            every_owner_channel(tag),
            note,
            *flatten(fields or {}),
        ],
    )


@functools.lru_cache(maxsize=1024)
def _update_indexes(owner: str, task: str, tag: str) -> tuple[str, ...]:
    """KEYS[2:18] of an update: the same 17 names for every change of every job of one
    (owner, task, tag), made once rather than on each of a worker's calls."""
    indexes = indexes_of(owner, task, tag)
    return (*indexes[:2], expiry_key(owner, tag), *indexes[2:])


@dataclass(frozen=True, slots=True)
class Hooks:
    """The events of one update that a webhook asked for (JSON records, '' for none)."""

    job: str
    workflow: str


def moved(outcome: Any) -> tuple[str, str, str] | None:
    """The record's (owner, task, workflow) when the update script refused its keys."""
    if isinstance(outcome, list) and len(outcome) == 4 and outcome[0] == "moved":
        return str(outcome[1]), str(outcome[2]), str(outcome[3] or "")
    return None


def settled(outcome: Any) -> tuple[str, Hooks | None]:
    """An update's outcome as 'ok', 'missing' or the refusing state, and its webhooks."""
    if isinstance(outcome, list) and outcome and outcome[0] == "hook":
        return "ok", Hooks(job=str(outcome[1] or ""), workflow=str(outcome[2] or ""))
    return str(outcome), None


def page_call(query: PageQuery, tag: str) -> ScriptCall:
    """One page of ``tag``: which indexes to merge, and the window of scores to read them in."""
    states = query.states if len(query.states) < len(JobState) else frozenset()
    if states:
        keys = [index_key(query.owner, tag, state=s, task=query.task) for s in sorted(states)]
    else:
        keys = [index_key(query.owner, tag, task=query.task)]
    high: str | int = "+inf"
    if query.created_before is not None:
        high = f"({to_score(query.created_before)}"
    cursor = ""
    if query.after is not None:
        after_score, after_id = query.after
        if query.created_before is None or after_score < to_score(query.created_before):
            high, cursor = after_score, after_id
    low = f"({to_score(query.created_after)}" if query.created_after is not None else "-inf"
    return ScriptCall(keys=keys, args=[high, cursor, low, query.limit, job_prefix(tag)])


def sweep_call(owner: str, tag: str, member: str) -> ScriptCall:
    """Take one due expiry entry (``member``) of ``tag`` out of every index, if its record
    is gone."""
    job_id, task = _decode_member(member)
    return ScriptCall(
        keys=[job_key(job_id), expiry_key(owner, tag), *indexes_of(owner, task, tag)],
        args=[job_id, member],
    )


def _decode_member(member: str) -> tuple[str, str]:
    job_id, task = json.loads(member)
    return str(job_id), str(task)


def batch_script(single: str, first: str | None = None) -> str:
    """A script that runs ``single`` once per item of a batch, in one atomic call.

    The single script's body becomes a function of its own ``KEYS`` and ``ARGV``, so the
    batch never drifts from it. Layout: ``ARGV[1]`` is the number of items, then each
    item's key count and argument count, then every item's arguments in order; ``KEYS``
    are every item's keys in order. Returns one reply per item (false becomes '').
    With ``first``, the batch's first item runs that script instead (a workflow's record
    before its steps').
    """
    head = first if first is not None else "return one(KEYS, ARGV)"
    return (
        "local function one(KEYS, ARGV)\n"
        + single
        + "\nend\nlocal function head(KEYS, ARGV)\n"
        + head
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
  if i == 1 then out[i] = head(keys, args) or '' else out[i] = one(keys, args) or '' end
end
return out
"""
    )


def batch_call(calls: list[ScriptCall]) -> ScriptCall:
    """The call of a :func:`batch_script` made of each item's own call."""
    keys: list[str] = []
    counts: list[str | int] = [len(calls)]
    args: list[str | int] = []
    for call in calls:
        keys += call.keys
        counts += (len(call.keys), len(call.args))
        args += call.args
    return ScriptCall(keys=keys, args=counts + args)


# KEYS: the owner's rate key
# ARGV: emission interval (µs: the window over the limit), window (µs), calls wanted
# Returns {admitted, wait}: how many of the wanted calls fit (at least 1, at most ARGV[3]),
# or {0, µs to wait} when none does. A generic cell rate algorithm: the key holds the
# theoretical arrival time, so one number per owner is the whole state, a full window's
# quota may come as a burst, and Redis's clock serves every API replica.
RATE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local wanted = tonumber(ARGV[3] or '1')
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local fit = math.floor((now + window - tat) / interval)
if fit < 1 then return {0, tat + interval - now - window} end
local admitted = math.min(wanted, fit)
local new = tat + admitted * interval
local ttl = math.max(1, math.ceil((new - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', ttl)
return {admitted, 0}
"""


def rate_call(owner: str, limit: int, window_seconds: float, wanted: int = 1) -> ScriptCall:
    """Admit up to ``wanted`` of ``limit`` calls per ``window_seconds`` of ``owner`` at once,
    or say how long to wait."""
    window = int(window_seconds * _MICROS)
    return ScriptCall(
        keys=[f"{PREFIX}:rate:{{{owner}}}"], args=[max(1, window // limit), window, wanted]
    )


# KEYS: the owner's subscription counts (a hash: replica id -> its live subscriptions)
# ARGV: this replica's id, its subscriptions that live already, how many it wants to count
#       in all (those and the new ones), the owner's limit, the prefix of the replicas'
#       lease keys
# Returns how many this replica may now count, between the first and the second number:
# the new ones that fit beside every other replica's, first come first served. A replica's
# lease key (``prefix .. id``, renewed by it, expiring when it dies) keeps its count alive:
# a count whose lease is gone is dropped, so a dead replica's places come back within one
# lease. The lease keys are read by names built here; this Redis is never a cluster (the
# limits live at JOBQL_REDIS_URL, with Celery's broker and the rate keys).
SUBSCRIPTIONS_SCRIPT = """
local wanted, live = tonumber(ARGV[3]), tonumber(ARGV[2])
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local granted = wanted
if wanted > mine then
  local others = 0
  local counts = redis.call('HGETALL', KEYS[1])
  for i = 1, #counts, 2 do
    if counts[i] ~= ARGV[1] then
      if redis.call('EXISTS', ARGV[5] .. counts[i]) == 1 then
        others = others + tonumber(counts[i + 1])
      else
        redis.call('HDEL', KEYS[1], counts[i])
      end
    end
  end
  granted = math.max(live, mine, math.min(wanted, tonumber(ARGV[4]) - others))
end
if granted > 0 then
  redis.call('HSET', KEYS[1], ARGV[1], granted)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return granted
"""


def subscriptions_key(owner: str) -> str:
    """The live subscriptions of ``owner`` on each API replica (a hash)."""
    return f"{PREFIX}:subscriptions:{{{owner}}}"


SUBSCRIPTION_LEASE_PREFIX = f"{PREFIX}:subscriptions:lease:"


def subscriptions_call(owner: str, replica: str, live: int, wanted: int, limit: int) -> ScriptCall:
    """Count ``wanted`` subscriptions of ``owner`` on ``replica`` (``live`` of them already
    counted and running), as many as fit under ``limit`` beside the other replicas'."""
    return ScriptCall(
        keys=[subscriptions_key(owner)],
        args=[replica, live, wanted, limit, SUBSCRIPTION_LEASE_PREFIX],
    )


# Every job of an ``enqueueMany`` batch in one call: one round trip, all or none.
CREATE_MANY_SCRIPT = batch_script(CREATE_SCRIPT)

# What a guarded call answers instead of the script's own reply (see :func:`guarded`).
LATE = "late"
AGAIN = "again"


def guarded(script: str) -> str:
    """``script`` behind a deadline on this Redis's own clock: the API's enqueue.

    ARGV[1] is the deadline in µs since the epoch by the server's ``TIME``; the rest are
    ``script``'s ARGV, and KEYS are its KEYS (KEYS[1] the first new job's record). Replies
    ``{'again'}`` when that record exists already (an earlier send of this same call ran:
    a client retry after a lost reply writes nothing twice), ``{'late'}`` once the deadline
    passed, having written nothing, else ``script``'s own reply. So a call that arrives
    late (Redis paused, the reply's reader gone) can only be refused: the API stops waiting
    a little after the deadline, and whatever runs after that point writes nothing.
    """
    return (
        "local function guarded(KEYS, ARGV)\n"
        + script
        + """
end
if redis.call('EXISTS', KEYS[1]) == 1 then return {'again'} end
local t = redis.call('TIME')
if tonumber(t[1]) * 1000000 + tonumber(t[2]) > tonumber(ARGV[1]) then return {'late'} end
local rest = {}
for i = 2, #ARGV do rest[i - 1] = ARGV[i] end
return guarded(KEYS, rest)
"""
    )


GUARDED_CREATE_SCRIPT = guarded(CREATE_SCRIPT)
GUARDED_CREATE_MANY_SCRIPT = guarded(CREATE_MANY_SCRIPT)


def guard_reply(reply: Any) -> str | None:
    """``LATE`` or ``AGAIN`` when a guarded call answered for its guard, else None."""
    if isinstance(reply, list) and len(reply) == 1 and reply[0] in (LATE, AGAIN):
        return str(reply[0])
    return None


# KEYS: job, expiry, its unsent marker (records.unsent_key), idempotency (the job's key for
#       none), queue (the job's key when its message is elsewhere), then every index of
#       the job (records.indexes_of)
# ARGV: job id, expiry member, ttl, job channel, owner channel, the unsent snapshot JSON,
#       ('' to announce nothing), publish command, the job's Celery message ('' for none),
#       every owner's channel
# Takes back a job whose enqueue is answered SERVICE_UNAVAILABLE, if no worker started it:
# the record, its indexes, its idempotency key (if it still names this job) and, on a Redis
# broker, its message go; a marker stays for the record's lifetime, so a worker that gets
# the message anyway (a publish that landed late, one already reserved) skips it rather
# than adopting it; and whoever saw the PENDING gets its end (REVOKED, NotSent).
# Returns 'ok', 'missing', or the state of a job a worker took already (it stays).
WITHDRAW_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state ~= 'PENDING' then return state end
redis.call('DEL', KEYS[1])
if KEYS[4] ~= KEYS[1] and redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
if KEYS[5] ~= KEYS[1] then redis.call('LREM', KEYS[5], 1, ARGV[8]) end
redis.call('ZREM', KEYS[2], ARGV[2])
for i = 6, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[3]))
if ARGV[6] ~= '' then
  redis.call(ARGV[7], ARGV[4], ARGV[6])
  redis.call(ARGV[7], ARGV[5], ARGV[6])
  redis.call(ARGV[7], ARGV[9], ARGV[6])
end
return 'ok'
"""


def withdraw_call(
    fields: dict[str, str],
    unsent: dict[str, str] | None,
    *,
    ttl: int,
    message: tuple[str, str] | None = None,
) -> ScriptCall:
    """Take back the job ``fields`` (its ``unsent`` snapshot announced, unless None), if
    still PENDING."""
    job_id, owner, task = fields["id"], fields["owner"], fields["task"]
    tag = slots.tag_of(job_id)
    job = job_key(job_id)
    idempotency = fields.get("idempotency_key")
    queue, body = message or ("", "")
    return ScriptCall(
        keys=[
            job,
            expiry_key(owner, tag),
            unsent_key(job_id),
            idempotency_key(owner, idempotency) if idempotency else job,
            queue or job,
            *indexes_of(owner, task, tag),
        ],
        args=[
            job_id,
            expiry_member(job_id, task),
            ttl,
            job_channel(job_id),
            owner_channel(owner, tag),
            dumps(unsent) if unsent else "",
            publish_command(),
            body,
            every_owner_channel(tag),
        ],
    )


# KEYS: workflow.  ARGV: ttl, field/value pairs.
# KEYS: the workflow's record, its owner's workflow index on its tag
# ARGV: ttl (s), creation score (µs), then the record's fields and values
# The index forgets entries older than a record lives, so it never outgrows the records.
WORKFLOW_RECORD_SCRIPT = """
local ttl, score = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], score, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. tostring(score - ttl * 1000000))
redis.call('EXPIRE', KEYS[2], ttl)
return false
"""

# A workflow's record and every step's, in one call: all of them exist, or none.
CREATE_WORKFLOW_SCRIPT = batch_script(CREATE_SCRIPT, first=WORKFLOW_RECORD_SCRIPT)


def create_workflow_call(
    workflow: dict[str, str], steps: list[dict[str, str]], *, ttl: int
) -> ScriptCall:
    """Write a workflow's record and its steps' PENDING records (announced once published)."""
    workflow_id, owner = workflow["id"], workflow["owner"]
    keys = [workflow_key(workflow_id), workflow_index_key(owner, slots.tag_of(workflow_id))]
    created = to_score(datetime.fromisoformat(workflow["created_at"]))
    # The id first among the fields: the script indexes ARGV[4], the id's value.
    fields = {"id": workflow_id, **workflow}
    head = ScriptCall(keys=keys, args=[ttl, created, *flatten(fields)])
    return batch_call([head, *(create_call(fields, ttl=ttl) for fields in steps)])
