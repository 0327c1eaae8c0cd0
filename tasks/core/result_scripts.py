"""Celery's result store as a Lua script: alone, and joined to a job's SUCCESS update.

Celery's Redis backend reads the stored state (a success is never overwritten), then
writes and announces the new one: :data:`STORE_SCRIPT` does both in one call. When the
job records and Celery's results share one Redis, :data:`SUCCESS_SCRIPT` also moves the
job's record to SUCCESS in that call, so a successful job costs the worker one round trip
at its end instead of two (``tasks.worker.results`` decides when it applies).
"""

from __future__ import annotations

from tasks.core.scripts import UPDATE_SCRIPT, ScriptCall

# KEYS: a task's result key.  ARGV: the encoded meta, seconds to keep it (0: no expiry)
# Returns 1 when stored and published, 0 when a stored SUCCESS stays (Celery's own rule:
# a lost worker's late outcome never overwrites a success), 'undecided' when the stored
# value is not JSON this script can read (another serializer, or compressed).
STORE_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if current then
  if string.sub(current, 1, 1) ~= '{' then return 'undecided' end
  local ok, meta = pcall(cjson.decode, current)
  if not ok or type(meta) ~= 'table' then return 'undecided' end
  if meta['status'] == 'SUCCESS' then return 0 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('SETEX', KEYS[1], ttl, ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""

# KEYS: the result key, then the update's KEYS.  ARGV: the encoded meta, seconds to keep
# it, then the update's ARGV (tasks.core.scripts.update_call).
# Returns {'undecided'} with nothing written when the store cannot decide (the caller then
# takes both stock steps), else {store's reply, update's reply}. Both scripts run as they
# are, in the order the worker runs them (Celery's store, then the record), each with its
# own rules: the record's update may be refused (a job cancelled mid-run stays REVOKED)
# while Celery's result is written, exactly as the two separate calls would have it.
SUCCESS_SCRIPT = (
    "local function store(KEYS, ARGV)\n"
    + STORE_SCRIPT
    + "\nend\nlocal function update(KEYS, ARGV)\n"
    + UPDATE_SCRIPT
    + """
end
local stored = store({KEYS[1]}, {ARGV[1], ARGV[2]})
if stored == 'undecided' then return {stored} end
local keys, args = {}, {}
for i = 2, #KEYS do keys[i - 1] = KEYS[i] end
for i = 3, #ARGV do args[i - 2] = ARGV[i] end
return {stored, update(keys, args)}
"""
)


def success_call(key: str, value: str | bytes, expires: int, update: ScriptCall) -> ScriptCall:
    """Store Celery's result ``value`` under ``key`` and run the record's ``update``."""
    return ScriptCall(keys=[key, *update.keys], args=[value, expires, *update.args])  # type: ignore[list-item]
