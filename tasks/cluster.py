"""Clients of a Redis/Valkey Cluster holding job records (``JOBQL_RECORDS_CLUSTER``).

One place builds them, sync for the worker and asyncio for the API, with the same fail-fast
timeouts as the single-Redis clients: a slot whose primary is down must be reported at
once, not waited for. redis-py follows ``-MOVED``/``-ASK`` and refreshes its slot map by
itself; a primary that is gone makes the calls of its slots fail until it (or a replica
promoted in its place) serves them again.
"""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from tasks.settings import Settings


def sync_records(settings: Settings) -> redis.RedisCluster:
    """The worker's cluster client: retries a moved or restarted node briefly."""
    return redis.RedisCluster.from_url(
        settings.records,
        decode_responses=True,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
    )


def async_records(settings: Settings) -> aioredis.RedisCluster:
    """The API's cluster client: one immediate retry, then the caller hears of it."""
    from redis.asyncio.retry import Retry as AsyncRetry

    return aioredis.RedisCluster.from_url(
        settings.records,
        decode_responses=True,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        max_connections=settings.redis_max_connections,
        retry=AsyncRetry(NoBackoff(), retries=1),
    )
