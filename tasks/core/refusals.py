"""Redis answering but refusing writes: out of memory at ``maxmemory`` with ``noeviction``
(``OOM``), unable to persist with ``stop-writes-on-bgsave-error`` or a failing append-only
file (``MISCONF``), or a replica (``READONLY``: the URL names a node that a failover made a
replica, until the address moves to the new primary). PING still works in each, and redis-py
raises them as ``ResponseError`` s (``OutOfMemoryError``, ``ReadOnlyError``), not connection
errors: unrecognised, the API answered them as internal errors with a traceback and the health
checks saw nothing. This module names them, in words an operator can act on; the probes make a
tiny write to find them.
"""

from __future__ import annotations

import redis.exceptions

from tasks.core.records import PREFIX

# The probes' write: one short-lived key, so a probe every second costs no memory.
WRITE_PROBE_KEY = f"{PREFIX}:health:write"
WRITE_PROBE_MS = 10_000


def write_refusal(exc: BaseException) -> str | None:
    """Why Redis refused a write, or None when ``exc`` is not such a refusal."""
    # Redis's first sentence: a script's error goes on with where in the script it was.
    said = str(exc).split(". ", 1)[0].rstrip(".")
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        # redis-py strips the reply's "OOM" code from the message: put it back.
        return f"Redis is out of memory: OOM {said}"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        # redis-py strips the "READONLY" code too.
        return f"Redis is a read-only replica: READONLY {said}"
    if isinstance(exc, redis.exceptions.ResponseError) and said.startswith("MISCONF"):
        return f"Redis cannot persist to disk and refuses writes: {said}"
    return None
