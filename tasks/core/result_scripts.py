"""Celery's result store as one Lua script: Celery's Redis backend reads the stored state (a
success is never overwritten), then writes and announces the new one in a pipeline; here both
are one round trip (``tasks.worker.results`` decides when it applies)."""

from __future__ import annotations

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
