"""What a worker's heartbeat says and where it lies: the format the worker writes and the API
reads (``/health``, ``workers``, ``jobql check``) without importing the worker."""

from __future__ import annotations

import hashlib
import uuid
from typing import TypedDict

from tasks.core.records import PREFIX
from tasks.core.settings import Settings


class WorkerBeat(TypedDict):
    """One worker as its last heartbeat described it."""

    name: str
    status: str  # "online", or "stopping" once a warm shutdown began
    pid: int
    pool: str
    concurrency: int
    queues: list[str]
    active: int  # tasks running now
    reserved: int  # tasks received and waiting for a pool slot
    processed: int  # tasks this worker ran since it started
    heartbeat: str  # ISO-8601, UTC, the worker's clock
    started_at: str
    incarnation: str  # drawn at each start: a restart under the same name has a new one


def broker_scope(settings: Settings) -> str:
    """A short name for the broker (its URL hashed: no credentials in key names)."""
    return hashlib.sha256(settings.broker.encode()).hexdigest()[:12]


def workers_key(settings: Settings) -> str:
    """The set of worker names that beat for this broker."""
    return f"{PREFIX}:workers:{broker_scope(settings)}"


def worker_key(settings: Settings, name: str) -> str:
    return f"{PREFIX}:worker:{broker_scope(settings)}:{name}"


# KEYS[1]: the set of names; ARGV[1]: the prefix of a worker's key. Returns every live beat
# and forgets the names whose key expired: one round trip, whatever the number of workers.
READ_SCRIPT = """
local beats = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local beat = redis.call('GET', ARGV[1] .. name)
  if beat then
    beats[#beats + 1] = beat
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return beats
"""


def worker_prefix(settings: Settings) -> str:
    return worker_key(settings, "")


def incarnation_prefix(settings: Settings) -> str:
    """Where each incarnation beats: the key holds the worker's name, with the same TTL."""
    return f"{PREFIX}:incarnation:{broker_scope(settings)}:"


_incarnation = ""


def incarnation() -> str:
    """This worker's incarnation id, in its main process and in the pool children it forks;
    '' outside a worker (or in a child that was not forked from it), which the reaper reads
    as "judge by the name alone", as before incarnations existed."""
    return _incarnation


def begin_incarnation() -> str:
    """Draw this worker's incarnation id: in the main process, before the pool forks, so every
    child inherits it."""
    global _incarnation
    _incarnation = uuid.uuid4().hex[:16]
    return _incarnation
