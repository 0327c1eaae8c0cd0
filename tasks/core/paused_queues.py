"""Paused queues, remembered in Redis beside the workers' heartbeats (:mod:`tasks.core.liveness`):
``pauseQueue`` records a queue here, then tells every worker to stop consuming it (Celery's
``cancel_consumer`` broadcast); a worker that starts while it is paused leaves it out of the
queues it consumes (:mod:`tasks.worker.paused`). Each paused queue keeps the names of the workers
that consumed it when it was paused, or would have since: ``resumeQueue`` tells those, and only
those, to consume it again (``add_consumer``), so a resume never adds a queue to a worker that
was not serving it.

Keys, per broker (the queues are the broker's): ``jobql:paused:<broker>`` a hash, queue ->
JSON ``{"since", "by"}``; ``jobql:paused:<broker>:held:<queue>`` a set of worker names.
"""

from __future__ import annotations

import json
from datetime import datetime

from tasks.core.liveness import broker_scope
from tasks.core.records import PREFIX
from tasks.core.settings import Settings


def paused_key(settings: Settings) -> str:
    """The hash of paused queues of this broker: name -> JSON ``{"since", "by"}``."""
    return f"{PREFIX}:paused:{broker_scope(settings)}"


def held_key(settings: Settings, queue: str) -> str:
    """The workers holding ``queue`` back while it is paused: those a resume tells."""
    return f"{paused_key(settings)}:held:{queue}"


def pause_note(by: str, since: datetime) -> str:
    return json.dumps({"since": since.isoformat(), "by": by})


# KEYS: paused hash, held set.  ARGV: queue, note (pause_note), the workers consuming it now...
# Returns 1 when it is paused now, 0 when it was paused already (its note stays; the workers
# are added to those held all the same).
PAUSE_SCRIPT = """
local new = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
for i = 3, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return new
"""

# KEYS: paused hash, held set.  ARGV: queue.
# Returns false when the queue was not paused, else {'resumed', worker...}: those to tell.
RESUME_SCRIPT = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return false end
local workers = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[2])
table.insert(workers, 1, 'resumed')
return workers
"""

# A starting worker. KEYS: paused hash, then one held set per queue of ARGV.
# ARGV: the worker's name, then the queues it is about to consume.
# Returns those of its queues that are paused, and holds each back under its name.
HOLD_SCRIPT = """
local held = {}
for i = 2, #ARGV do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('SADD', KEYS[i], ARGV[1])
    held[#held + 1] = ARGV[i]
  end
end
return held
"""


def hold_keys(settings: Settings, queues: list[str]) -> list[str]:
    """The KEYS of :data:`HOLD_SCRIPT` for ``queues``."""
    return [paused_key(settings), *(held_key(settings, queue) for queue in queues)]
