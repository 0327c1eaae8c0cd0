"""A job's timeline and its log lines: how they are stored with the record, and read back.

**The timeline** is the record's ``events`` field, written by the same script call that
changes the record (:data:`tasks.core.scripts.UPDATE_SCRIPT` runs :data:`TIMELINE_LUA`), so
it costs no round trip, expires with the record and travels in every event the change
publishes. It is a JSON array of entries, oldest first, at most :data:`EVENTS_KEPT` (the
oldest go). Each entry is ``[ms, state, attempt, worker, message, count]``, shortened as
far as it can be, because a job record stays a compact listpack in Redis only while every
value is at most 64 bytes (``hash-max-listpack-value``), and a plain run's timeline must fit:

- ``ms``: the first entry's time in milliseconds since the epoch, every other entry's
  milliseconds since the entry before it;
- ``state``: the index of the state the job moved to in :class:`JobState`'s order;
- ``attempt`` (which run: ``Job.attempts`` then): given on a start, else the entry
  before's (0 on the first);
- ``worker``: else the entry before's, except on a start, where none means the record's
  ``worker`` (the script writes it out on that start once a later start names another);
- ``message``: a retry's error, a progress message, why a job was run again; on a final
  state, none means the record's ``error``;
- ``count``: how many progress reports the entry stands for. Progress is coalesced:
  consecutive reports are one entry holding the latest report's time and message, so a job
  reporting 1,000 times keeps every state change it went through.

A plain run is ``[[1765432100000,0],[12,1,1],[250,4]]``: queued, started (attempt 1, the
record's worker), succeeded. A longer timeline (a retry's error makes one) is cut into
several fields of at most 64 bytes, ``events``, ``events:2``..., joined by
:meth:`tasks.core.records.JobSnapshot.from_hash`: one field longer than that would turn the
whole record into a hash table (a record with one retry measured 512 bytes as a listpack,
1,209 as a hash table).

**Log lines** (``JobContext.log``) are a Redis list of their own, ``<record key>:logs``,
made on the first line: a job that logs nothing costs nothing. Each line is
``[ms, level, message]`` (``logging``'s numeric level), at most :data:`LOG_LINE_CHARS`
characters; the list keeps the newest :data:`LOG_LINES_KEPT` lines, and the record's
``logs_dropped`` counts the lines dropped before them (set from the first line on, so it
also tells the update script that there is a list). The list expires with the record: each
log call gives it the record's remaining time to live, and each change of a record that has
one renews both. A log line is a change of the job: the record's ``sequence`` grows and the
record is published on the job's own channel (not its owner's: a ``jobs`` stream sees
lines at the next change of state), so a ``job(id)`` subscription streams lines live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tasks.core.records import JobState, dumps, job_channel, job_key, loads, to_score

# Entries a timeline keeps; the oldest go first.
EVENTS_KEPT = 100
# The longest value of one field of the record (Redis's default ``hash-max-listpack-value``):
# a longer timeline is cut into fields ``events``, ``events:2``, ``events:3``... of at most
# this many bytes, never inside a character, and read back joined.
PIECE_BYTES = 64
# The longest message an entry keeps (a retry's error, a progress message), in characters.
NOTE_CHARS = 200
# Log lines a job keeps (the oldest are dropped and counted), and the longest line.
LOG_LINES_KEPT = 200
LOG_LINE_CHARS = 1000

_STATES = list(JobState)
_CODE = {state: index for index, state in enumerate(_STATES)}


LOGS_SUFFIX = ":logs"


def logs_key(job_id: str) -> str:
    """The job's log lines (a list): the record's key and hash tag, so the same slot."""
    return job_key(job_id) + LOGS_SUFFIX


def note(text: str) -> str:
    """An entry's message: one line, at most :data:`NOTE_CHARS` characters."""
    text = " ".join(text.split())
    return text if len(text) <= NOTE_CHARS else text[: NOTE_CHARS - 1] + "…"


# The Lua functions the update script defines; it calls ``write_timeline`` once per change
# (see the module's note). ``snap``: the record, ``put``: how the script sets a field;
# ``code``: the new state's index; ``at``: ms since the epoch; ``attempt``: the record's
# attempts after this change; ``before``: the record's worker before it; ``now``: its worker
# after it; ``started``: whether this change is a start. Returns the fields to delete.
TIMELINE_LUA = (
    """
local function given(v) return v ~= nil and v ~= cjson.null end
local function timeline(raw, code, at, attempt, before, now, note, started)
  local list = {}
  if raw and raw ~= '' then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' then list = decoded end
  end
  local n, last = #list, 0
  for i = 1, n do last = last + list[i][1] end
  local tail = list[n]
  -- What the new text ends with in place of ``cut`` bytes of the old one's end: only the
  -- new or changed entry is encoded (a change of an earlier entry, or a drop, encodes all).
  local cut, ending = nil, nil
  if code == __PROGRESS__ and tail and tail[2] == __PROGRESS__ then
    local old = cjson.encode(tail)
    tail[1] = at - (last - tail[1])
    tail[5] = note
    tail[6] = (given(tail[6]) and tail[6] or 1) + 1
    if string.sub(raw, -#old - 1) == old .. ']' then cut, ending = #old + 1, cjson.encode(tail) end
  else
    local whole = false
    if started then
      for i = n, 1, -1 do
        if list[i][2] == __STARTED__ then
          if not given(list[i][4]) then
            list[i][4] = before
            whole = true
          end
          break
        end
      end
    end
    local entry = {at - last, code}
    if started then entry[3] = attempt end
    if note ~= '' then entry[5] = note end
    list[n + 1] = entry
    if not whole and n > 0 and string.sub(raw, -1) == ']' then
      cut, ending = 1, ',' .. cjson.encode(entry)
    end
  end
  local drop = #list - __KEPT__
  if drop > 0 then
    local time, run, worker = 0, 0, cjson.null
    for i = 1, drop + 1 do
      local e = list[i]
      time = time + e[1]
      if given(e[3]) then run = e[3] end
      if given(e[4]) then worker = e[4]
      elseif e[2] == __STARTED__ then worker = now end
    end
    local head = list[drop + 1]
    head[1] = time
    if not given(head[3]) then head[3] = run end
    if not given(head[4]) and head[2] ~= __STARTED__ then head[4] = worker end
    local kept = {}
    for i = drop + 1, #list do kept[#kept + 1] = list[i] end
    list = kept
  elseif cut then
    return string.sub(raw, 1, #raw - cut) .. ending .. ']'
  end
  return cjson.encode(list)
end
local function write_timeline(snap, put, code, at, attempt, before, now, note, started)
  local parts, n = {snap['events'] or ''}, 2
  while snap['events:' .. n] do
    parts[n] = snap['events:' .. n]
    n = n + 1
  end
  local text = timeline(table.concat(parts), code, at, attempt, before, now, note, started)
  local start, piece = 1, 1
  while start <= #text do
    local stop = math.min(start + __PIECE__ - 1, #text)
    while stop < #text and stop > start do
      local following = string.byte(text, stop + 1)
      if following < 128 or following >= 192 then break end
      stop = stop - 1
    end
    put(piece == 1 and 'events' or 'events:' .. piece, string.sub(text, start, stop))
    start, piece = stop + 1, piece + 1
  end
  local stale = {}
  for i = piece, n - 1 do
    stale[#stale + 1] = 'events:' .. i
    snap['events:' .. i] = nil
  end
  return stale
end
""".replace("__PROGRESS__", str(_CODE[JobState.PROGRESS]))
    .replace("__STARTED__", str(_CODE[JobState.STARTED]))
    .replace("__KEPT__", str(EVENTS_KEPT))
    .replace("__PIECE__", str(PIECE_BYTES))
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a timeline, written out."""

    at: datetime
    state: JobState
    attempt: int
    worker: str | None
    message: str | None
    count: int


def entries(raw: str, worker: str | None, error: dict[str, str] | None) -> list[Entry]:
    """A record's ``events`` field read back, given the record's ``worker`` and ``error``
    (which the latest start and a final state leave out)."""
    if not raw:
        return []
    try:
        stored = loads(raw)
    except ValueError:
        return []
    out: list[Entry] = []
    ms, attempt, carried = 0, 0, None
    for entry in stored:
        ms += entry[0]
        state = _STATES[entry[1]]
        extra = entry[2:] + [None] * (6 - len(entry))
        if extra[0] is not None:
            attempt = extra[0]
        if extra[1] is not None:
            carried = extra[1]
        elif state is JobState.STARTED:
            carried = worker
        message = extra[2]
        if message is None and state.done and error:
            message = f"{error.get('type', 'Error')}: {error.get('message', '')}"
        out.append(
            Entry(
                at=datetime.fromtimestamp(ms / 1000, UTC),
                state=state,
                attempt=attempt,
                worker=carried or None,
                message=message,
                count=extra[3] or 1,
            )
        )
    return out


# KEYS: the job's record, its log lines
# ARGV: job channel, publish command, lines kept, then each line (JSON)
# Returns 'ok', 'missing', or the final state of a job that takes no more lines.
LOG_SCRIPT = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'SUCCESS' or state == 'FAILURE' or state == 'REVOKED' then return state end
local n = redis.call('RPUSH', KEYS[2], unpack(ARGV, 4))
local drop = math.max(0, n - tonumber(ARGV[3]))
if drop > 0 then redis.call('LTRIM', KEYS[2], drop, -1) end
redis.call('HINCRBY', KEYS[1], 'logs_dropped', drop)
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
redis.call('HINCRBY', KEYS[1], 'sequence', 1)
local flat = redis.call('HGETALL', KEYS[1])
local snap = {}
for i = 1, #flat, 2 do snap[flat[i]] = flat[i + 1] end
redis.call(ARGV[2], ARGV[1], cjson.encode(snap))
return 'ok'
"""

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def level_number(level: str | int) -> int:
    """``"info"``, ``"WARNING"`` or ``logging.ERROR`` as a number; ValueError otherwise."""
    if isinstance(level, int):
        return level
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; one of {sorted(LEVELS)}") from None


def log_line(message: str, level: int, at: datetime) -> str:
    """One stored line: at most :data:`LOG_LINE_CHARS` characters of ``message``."""
    if len(message) > LOG_LINE_CHARS:
        message = message[: LOG_LINE_CHARS - 1] + "…"
    return dumps([to_score(at) // 1000, level, message])


def log_args(job_id: str, lines: list[str], publish: str) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of :data:`LOG_SCRIPT` for ``lines`` of one job."""
    return [job_key(job_id), logs_key(job_id)], [
        job_channel(job_id),
        publish,
        LOG_LINES_KEPT,
        *lines,
    ]


@dataclass(frozen=True, slots=True)
class LogLine:
    at: datetime
    level: int
    message: str


def log_lines(stored: list[str]) -> list[LogLine]:
    """Lines as the list holds them, read back (one that is not a line is skipped)."""
    out = []
    for text in stored:
        try:
            ms, level, message = loads(text)
        except ValueError:
            continue
        out.append(LogLine(datetime.fromtimestamp(ms / 1000, UTC), int(level), str(message)))
    return out
