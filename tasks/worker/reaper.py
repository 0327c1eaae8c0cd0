"""Lost workers: their running jobs go back on the queue in seconds, not after kombu's
``visibility_timeout`` (an hour by default). Every live worker scans once per heartbeat interval
and re-queues a job whose record names an incarnation (:mod:`tasks.worker.heartbeat`) gone for
``JOBQL_REQUEUE_LOST_AFTER`` past its heartbeat's expiry, moving the record to RETRY before
kombu's ``QoS.restore_by_tag`` puts the message back, so no job runs twice at once. It runs where
one Redis, under one hash tag, holds the broker, the heartbeats and the records.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlparse

import redis
from celery import bootsteps

from tasks.core import events, redis_clients, slots
from tasks.core.liveness import broker_scope, incarnation_prefix, worker_prefix
from tasks.core.records import PREFIX, RUNNING_STATES, JobState, job_prefix
from tasks.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# KEYS: kombu's unacked hash, the hash of workers seen missing (liveness key -> first seen, s)
# ARGV: job key prefix, worker heartbeat key prefix, grace (s), missing hash TTL (s),
#       incarnation key prefix
# Returns {delivery tag, job id, worker, lost, liveness key} for each message whose job runs
# on a worker missing for longer than the grace. A worker is judged by the incarnation the
# job's record names (a restart under the same name is another incarnation), or by its
# name for a record written before incarnations. The job records and heartbeats are read by
# names built here from the messages (like the page script's); it runs only where one Redis
# holds the broker, the heartbeats and the records under one tag (never on a cluster: no
# broker there).
SCAN_SCRIPT = """
local now = tonumber(redis.call('TIME')[1])
local grace = tonumber(ARGV[3])
local out = {}
for _, seen in ipairs(redis.call('HKEYS', KEYS[2])) do
  if redis.call('EXISTS', seen) == 1 then redis.call('HDEL', KEYS[2], seen) end
end
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local ok, payload = pcall(cjson.decode, entries[i + 1])
  local id
  if ok and type(payload) == 'table' and type(payload[1]) == 'table'
      and type(payload[1]['headers']) == 'table' then
    id = payload[1]['headers']['id']
  end
  if type(id) == 'string' then
    local rec = redis.call('HMGET', ARGV[1] .. id, 'state', 'worker', 'lost', 'incarnation')
    local state, worker, incarnation = rec[1], rec[2], rec[4]
    if (state == 'STARTED' or state == 'PROGRESS') and worker and worker ~= '' then
      local alive = ARGV[2] .. worker
      if incarnation and incarnation ~= '' then alive = ARGV[5] .. incarnation end
      if redis.call('EXISTS', alive) == 1 then
        redis.call('HDEL', KEYS[2], alive)
      else
        local first = tonumber(redis.call('HGET', KEYS[2], alive) or '')
        if not first then
          redis.call('HSET', KEYS[2], alive, now)
          redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
          first = now
        end
        if now - first >= grace then
          out[#out + 1] = {entries[i], id, worker, rec[3] or '0', alive}
        end
      end
    end
  end
end
return out
"""


UNLOCK_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def missing_key(settings: Settings) -> str:
    return f"{PREFIX}:workers-missing:{broker_scope(settings)}"


def lock_key(settings: Settings) -> str:
    return f"{PREFIX}:reaper:{broker_scope(settings)}"


class Reaper(bootsteps.StartStopStep):  # type: ignore[misc]
    """Re-queues the running jobs of lost workers, from a thread of the worker's main process."""

    requires = ("tasks.worker.heartbeat:Heartbeat",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: redis.Redis | None = None
        self._connection: Any = None

    def start(self, worker: Any) -> None:
        settings = get_settings()
        if urlparse(settings.broker).scheme not in ("redis", "rediss", "sentinel"):
            return  # RabbitMQ redelivers a lost consumer's messages by itself
        if settings.broker != settings.redis or settings.records != settings.redis:
            logger.info("lost workers' jobs wait for the visibility timeout: the broker is "
                        "not the Redis that holds job records and heartbeats")  # fmt: skip
            return
        if settings.shards != 1:
            logger.info("lost workers' jobs wait for the visibility timeout: job records "
                        "are spread over several hash tags")  # fmt: skip
            return
        self._connection = worker.app.connection_for_write()
        self._client = redis_clients.worker_client()
        self._thread = threading.Thread(
            target=self._reap_forever, args=(worker, settings), name="jobql-reaper", daemon=True
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._connection is not None:
            self._connection.release()

    shutdown = stop

    def _reap_forever(self, worker: Any, settings: Settings) -> None:
        while not self._stop.wait(settings.worker_heartbeat_interval):
            try:
                self.reap(worker.hostname, settings)
            except Exception as exc:
                logger.warning("lost workers not checked: %s", exc)

    def reap(self, me: str, settings: Settings) -> list[str]:
        """One scan, unless another worker's reaper is scanning now; the re-queued job ids.

        The lock only keeps scans apart (it expires after an interval if its holder dies):
        every worker scans once per interval, so a worker configured with a longer interval
        or grace never delays the others.
        """
        assert self._client is not None
        interval_ms = int(settings.worker_heartbeat_interval * 1000)
        if not self._client.set(lock_key(settings), me, nx=True, px=interval_ms):
            return []
        try:
            return self._requeue(settings)
        finally:
            self._client.eval(UNLOCK_SCRIPT, 1, lock_key(settings), me)

    def _requeue(self, settings: Settings) -> list[str]:
        assert self._client is not None
        channel = self._connection.default_channel
        found = self._client.eval(
            SCAN_SCRIPT,
            2,
            channel.unacked_key,
            missing_key(settings),
            job_prefix(slots.tags_for(1)[0]),
            worker_prefix(settings),
            settings.requeue_lost_after,
            24 * 3600,
            incarnation_prefix(settings),
        )
        requeued = []
        for tag, job_id, lost_worker, lost, liveness in found:
            reason = (
                f"worker {lost_worker} lost: no heartbeat for over "
                f"{settings.heartbeat_ttl + settings.requeue_lost_after:g} s"
            )
            outcome = events.transition(
                job_id,
                JobState.RETRY,
                {"redelivery": reason, "lost": str(int(lost) + 1)},
                allowed_from=RUNNING_STATES,
                note=reason,
            )
            if outcome == "ok":
                channel.qos.restore_by_tag(tag, leftmost=True)
                self._client.hdel(missing_key(settings), liveness)
                logger.warning("re-queued job %s: %s", job_id, reason)
                requeued.append(job_id)
        return requeued
