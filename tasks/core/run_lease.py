"""A job's run lease: one run of a job at a time, whatever the broker does.

Jobs are acknowledged late, so a broker that takes a worker's connection for lost hands the
messages of its running jobs out again while those runs go on: RabbitMQ does it the moment an
AMQP connection breaks (celery/celery#4671), and no worker can keep it from doing so (an AMQP
delivery is acknowledged only on the channel that received it). So each run takes its job's
lease before it records its start: ``SET <job key>:run <token> NX PX <lease>``, renewed while it
runs, released once its outcome is recorded. A delivery that finds another run's lease does not
run: :class:`tasks.core.base.JobTask` sends the job's message again to arrive when the lease
would lapse, and acknowledges this one; once the lease is gone, that copy finds the job finished
(and is dropped) or, if the run holding it was lost, runs it.

Taken with every broker but Redis under JobQL's transport (:mod:`tasks.worker.broker`), which
holds a running job's message across a reconnect, so no second delivery comes to fence off.

The token names the worker's incarnation and the pool process: a lease left by a process of this
very worker that no longer runs the job (a pool process killed, whose job Celery redelivers at
once) is taken over at once instead of waited out. Any other lapses after ``lease_seconds`` (the
heartbeat TTL: a lost worker's lease is gone before the reaper re-queues its jobs) unless renewed,
every heartbeat interval, by a thread of the process running it, and only for runs that last
longer than an interval: a short run costs one ``SET`` and one release.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from tasks.core import liveness, records, redis_clients
from tasks.core.settings import get_settings

logger = logging.getLogger(__name__)

# KEYS[1]: the lease; ARGV[1]: the token. Deleted only by the run holding it.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1]: the lease; ARGV[1]: the token, ARGV[2]: its length (ms). 1: renewed; 2: it had
# lapsed (Redis was away longer than a lease) and nobody took it, so it is taken again;
# 0: another run holds it.
RENEW_SCRIPT = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"""
# KEYS[1]: the lease; ARGV[1]: the stale holder's token, ARGV[2]: the new one, ARGV[3]: ms.
TAKEOVER_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def lease_key(job_id: str) -> str:
    """Beside the job's record, in its hash slot."""
    return records.job_key(job_id) + ":run"


def lease_seconds() -> float:
    return get_settings().heartbeat_ttl


@dataclass
class _Lease:
    key: str
    token: str
    renewed: float  # monotonic
    thread: int  # the run's: only it releases the lease (a threads pool runs many at once)


@dataclass(frozen=True)
class Holder:
    """Another run's lease on the job: its token and how long before it lapses (s)."""

    token: str
    lapses_in: float


# Whether runs take the lease here: a worker on a Redis broker with JobQL's transport
# (tasks.worker.broker, which holds a running job's message across a reconnect, so no second
# delivery comes) turns it off as it starts (tasks.worker.app.attach); on with any other broker.
wanted = True

_lock = threading.Lock()
_held: dict[str, _Lease] = {}  # job id -> the lease a run of this process holds


_tokens = itertools.count()
_scripts: tuple[redis.Redis, Any, Any] | None = None  # a client, its release and renew scripts


def _token() -> str:
    """Unique to this run: the incarnation and process, and a count within the process."""
    return f"{liveness.incarnation()}:{os.getpid()}:{next(_tokens)}"


def _registered(client: redis.Redis) -> tuple[Any, Any]:
    """The release and renew scripts on ``client``, sent by their SHA (EVALSHA)."""
    global _scripts
    scripts = _scripts
    if scripts is None or scripts[0] is not client:
        scripts = _scripts = (
            client,
            client.register_script(RELEASE_SCRIPT),
            client.register_script(RENEW_SCRIPT),
        )
    return scripts[1], scripts[2]


def take(client: redis.Redis, job_id: str) -> Holder | None:
    """Take the job's lease for the run starting in this thread: None once taken, else the
    live holder (this run must not go on).

    Raises ``redis.RedisError``.
    """
    key, token = lease_key(job_id), _token()
    ms = int(lease_seconds() * 1000)
    if not client.set(key, token, nx=True, px=ms):
        found, left = client.get(key), client.pttl(key)
        holder = found.decode() if isinstance(found, bytes) else found
        if holder is not None and not _stale(job_id, holder):
            return Holder(holder, max(left, 0) / 1000)
        # Gone meanwhile (released or lapsed), or a lost run of this worker's: take it.
        taken = (
            client.set(key, token, nx=True, px=ms)
            if holder is None
            else client.eval(TAKEOVER_SCRIPT, 1, key, holder, token, ms)
        )
        if not taken:
            return take(client, job_id)  # another delivery took it first: judge it again
        if holder is not None:
            logger.warning("job %s: took over the lease its lost run %s left", job_id, holder)
    with _lock:
        _held[job_id] = _Lease(key, token, time.monotonic(), threading.get_ident())
    _renewer.ensure()
    return None


def _stale(job_id: str, holder: str) -> bool:
    """A lease this worker's incarnation left in a process that no longer runs the job."""
    incarnation, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if not incarnation or incarnation != liveness.incarnation() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        with _lock:
            return job_id not in _held  # no run of this process holds it any more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def release(client: redis.Redis, job_id: str) -> None:
    """Release the lease this process's run of the job holds, if any: once its outcome (or
    its retry) is recorded. A failure is logged: the lease lapses by itself.
    """
    with _lock:
        lease = _held.get(job_id)
        if lease is None or lease.thread != threading.get_ident():
            return
        del _held[job_id]
    try:
        _registered(client)[0](keys=[lease.key], args=[lease.token])
    except redis.RedisError as exc:
        logger.warning("the run lease of job %s lapses by itself: %s", job_id, exc)


def holds(job_id: str) -> bool:
    """Whether the run in this thread holds the job's lease."""
    with _lock:
        lease = _held.get(job_id)
        return lease is not None and lease.thread == threading.get_ident()


class Renewer:
    """One thread per process, started with its first lease: every heartbeat interval it
    renews the leases of runs that have lasted an interval since their last renewal."""

    def __init__(self) -> None:
        self._pid = 0
        self._start_lock = threading.Lock()

    def ensure(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid != os.getpid():  # first lease of this process (or of a forked child)
                threading.Thread(target=self._run, name="jobql-run-lease", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        interval = get_settings().worker_heartbeat_interval
        failing = False
        while True:
            time.sleep(interval / 2)
            try:
                self.renew(redis_clients.records_client(), interval)
            except Exception as exc:  # a lost Redis: said once, tried again every round
                if not failing:
                    logger.warning("run leases not renewed while Redis is unreachable: %s", exc)
                failing = True
            else:
                if failing:
                    logger.info("run leases renewed again")
                failing = False

    def renew(self, client: redis.Redis, interval: float) -> None:
        now = time.monotonic()
        with _lock:
            due = [(job, lease) for job, lease in _held.items() if now - lease.renewed >= interval]
        if not due:
            return
        ms = int(lease_seconds() * 1000)
        for job_id, lease in due:  # one call each: a cluster may hold them in many slots
            outcome = _registered(client)[1](keys=[lease.key], args=[lease.token, ms])
            lease.renewed = now
            if outcome == 0:
                logger.warning("job %s: another run took its lease while this one ran", job_id)
            elif outcome == 2:
                logger.warning("job %s: its run lease had lapsed; taken again", job_id)


_renewer = Renewer()
