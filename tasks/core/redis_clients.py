"""Every Redis client JobQL opens is made here, from the settings, so the address, the password,
TLS and Sentinel are read the same way for the API, the worker and ``jobql check``: plain, TLS
(``rediss://``), Sentinel (Celery's ``sentinel://`` form) or a Cluster (job records and their
events only: ``JOBQL_RECORDS_CLUSTER``). A call site chooses only what is its own (decoded
replies, its retry policy, its pool); Celery's broker and result backend get the same TLS and
Sentinel options from :func:`celery_redis_options`.
"""

from __future__ import annotations

import os
import ssl
import threading
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode as SyncClusterNode
from redis.exceptions import RedisClusterUnreachableError, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel

from tasks.core.settings import Settings, get_settings

SENTINEL_SCHEME = "sentinel"
_TLS_SCHEMES = frozenset({"rediss"})
_CERT_REQS = {
    "required": ssl.CERT_REQUIRED,
    "optional": ssl.CERT_OPTIONAL,
    "none": ssl.CERT_NONE,
}


def is_sentinel(url: str) -> bool:
    return urlsplit(url).scheme == SENTINEL_SCHEME


def is_tls(url: str) -> bool:
    return urlsplit(url).scheme in _TLS_SCHEMES


def is_redis(url: str) -> bool:
    """Whether a URL names Redis in any shape JobQL speaks (not RabbitMQ, not a database)."""
    return urlsplit(url).scheme in {"redis", "unix", SENTINEL_SCHEME, *_TLS_SCHEMES}


def tls_options(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS keywords from ``JOBQL_REDIS_TLS_*`` (for ``rediss://`` connections)."""
    required = settings.redis_tls_cert_reqs == "required"
    options: dict[str, Any] = {
        "ssl_cert_reqs": _CERT_REQS[settings.redis_tls_cert_reqs],
        # A certificate that need not verify cannot name its host either.
        "ssl_check_hostname": required,
    }
    for key, path in (
        ("ssl_ca_certs", settings.redis_tls_ca_certs),
        ("ssl_certfile", settings.redis_tls_certfile),
        ("ssl_keyfile", settings.redis_tls_keyfile),
    ):
        if path is not None:
            options[key] = str(path)
    return options


def celery_redis_options(url: str, settings: Settings) -> dict[str, Any]:
    """What Celery needs besides ``url`` to reach it: TLS (``*_use_ssl``) and Sentinel options.

    Keys: ``ssl`` (for ``broker_use_ssl`` / ``redis_backend_use_ssl``) and ``transport``
    (merged into ``broker_transport_options`` / ``result_backend_transport_options``).
    """
    found: dict[str, Any] = {}
    if is_tls(url):
        found["ssl"] = {k: v for k, v in tls_options(settings).items() if k != "ssl_check_hostname"}
    if is_sentinel(url):
        found["transport"] = {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": _sentinel_kwargs(settings),
        }
    return found


def sentinel_hosts(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The sentinels' addresses, and the master's db, username and password, from a URL."""
    hosts: list[tuple[str, int]] = []
    master: dict[str, Any] = {}
    for i, chunk in enumerate(part for part in url.split(";") if part.strip()):
        parts = urlsplit(chunk.strip())
        if parts.scheme != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError("a Sentinel URL is sentinel://host:port;sentinel://host:port/db")
        hosts.append((parts.hostname, parts.port or 26379))
        if i == 0:
            if parts.password:
                master["password"] = unquote(parts.password)
            if parts.username:
                master["username"] = unquote(parts.username)
            if parts.path.strip("/"):
                master["db"] = int(parts.path.strip("/"))
    return hosts, master


def _sentinel_kwargs(settings: Settings) -> dict[str, Any]:
    """Keywords for the connections to the sentinels themselves (not to the master): a
    sentinel that does not answer must not hold a caller longer than the connect timeout."""
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.connect_timeout,
    }
    if settings.redis_sentinel_password is not None:
        kwargs["password"] = settings.redis_sentinel_password.get_secret_value()
    return kwargs


def _master_name(settings: Settings) -> str:
    if not settings.redis_sentinel_master:
        raise ValueError("a sentinel:// URL needs JOBQL_REDIS_SENTINEL_MASTER")
    return settings.redis_sentinel_master


def _common(
    url: str, settings: Settings, decode: bool, read_timeout: bool, retry: Any
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "decode_responses": decode,
        "socket_connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout if read_timeout else None,
    }
    if retry is not None:  # else redis-py's default policy
        kwargs["retry"] = retry
    if is_tls(url):
        kwargs |= tls_options(settings)
    return kwargs


def sync_client(
    url: str,
    settings: Settings,
    *,
    decode: bool = True,
    read_timeout: bool = True,
    retry: Retry | None = None,
) -> redis.Redis:
    """A blocking client (the worker's threads, ``jobql check``): never on an event loop.

    ``read_timeout=False``: a reply may take forever (a pub/sub reader); ``retry``: the
    site's own policy (default: redis-py's).
    """
    kwargs = _common(url, settings, decode, read_timeout, retry)
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **kwargs)
    hosts, master = sentinel_hosts(url)
    manager = Sentinel(hosts, sentinel_kwargs=_sentinel_kwargs(settings))
    client = manager.master_for(_master_name(settings), redis_class=redis.Redis, **master, **kwargs)
    return cast(redis.Redis, client)


class _BlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """redis-py's Sentinel pool that makes a burst wait for a connection, as the plain one does.

    Both parents are public and cooperate through ``super()``: Sentinel finds the master,
    the blocking pool bounds the connections (``master_for`` takes the pool class).
    """


def async_client(
    url: str,
    settings: Settings,
    *,
    decode: bool = True,
    read_timeout: bool = True,
    retry: AsyncRetry | None = None,
    max_connections: int | None = None,
    wait_for_connection: float | None = None,
    health_check_interval: int = 0,
) -> aioredis.Redis:
    """An asyncio client (the API). ``max_connections`` with ``wait_for_connection`` bounds
    its pool and makes a burst wait that long for a free connection instead of failing."""
    kwargs = _common(url, settings, decode, read_timeout, retry)
    if health_check_interval:
        kwargs["health_check_interval"] = health_check_interval
    blocking = max_connections is not None and wait_for_connection is not None
    pool_kwargs: dict[str, Any] = {}
    if max_connections is not None:
        pool_kwargs["max_connections"] = max_connections
    if blocking:
        pool_kwargs["timeout"] = wait_for_connection
    if not is_sentinel(url):
        pool_class = aioredis.BlockingConnectionPool if blocking else aioredis.ConnectionPool
        pool = pool_class.from_url(url, **kwargs, **pool_kwargs)
        return aioredis.Redis(connection_pool=pool)
    hosts, master = sentinel_hosts(url)
    manager = AsyncSentinel(hosts, sentinel_kwargs=_sentinel_kwargs(settings))
    client = manager.master_for(
        _master_name(settings),
        redis_class=aioredis.Redis,
        connection_pool_class=_BlockingSentinelPool if blocking else AsyncSentinelPool,
        **master,
        **kwargs,
        **pool_kwargs,
    )
    return cast(aioredis.Redis, client)


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster's URL names one node or several, ``;``-separated as Sentinel's are
    (``redis://:pw@a:7000;redis://b:7001``): the first URL, whose scheme, credentials and
    options serve every node, and the other nodes' addresses."""
    first, *others = [part.strip() for part in url.split(";") if part.strip()]
    seeds: list[tuple[str, int]] = []
    for other in others:
        parts = urlsplit(other)
        if parts.scheme != urlsplit(first).scheme or not parts.hostname:
            raise ValueError("a cluster URL is redis://host:port;redis://host:port, one scheme")
        seeds.append((parts.hostname, parts.port or 6379))
    return first, seeds


# What redis-py's cluster client raises when no node it knows answers, or none serves a
# slot (a primary died and its replica is not yet elected). They are not ``RedisError``s
# (redis/redis-py#2310), so they would escape every handler that treats Redis as down.
_CLUSTER_DOWN = (RedisClusterUnreachableError, SlotNotCoveredError)


class _SyncCluster(redis.RedisCluster):
    """redis-py's cluster client, raising a cluster that does not answer as the
    ``redis.ConnectionError`` a single Redis that does not answer raises."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:  # it learns the nodes here: the seeds must answer
            super().__init__(*args, **kwargs)
        except _CLUSTER_DOWN as exc:
            raise redis.ConnectionError(f"no node of the Redis Cluster answers: {exc}") from exc

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except _CLUSTER_DOWN as exc:
            raise redis.ConnectionError(f"the Redis Cluster does not answer: {exc}") from exc


class _AsyncCluster(aioredis.RedisCluster):
    """:class:`_SyncCluster` for asyncio: it learns the nodes on its first command."""

    async def initialize(self, *args: Any, **kwargs: Any) -> _AsyncCluster:
        try:
            await super().initialize(*args, **kwargs)
        except _CLUSTER_DOWN as exc:
            raise redis.ConnectionError(f"no node of the Redis Cluster answers: {exc}") from exc
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except _CLUSTER_DOWN as exc:
            raise redis.ConnectionError(f"the Redis Cluster does not answer: {exc}") from exc


def sync_cluster(url: str, settings: Settings, *, retry: Retry | None = None) -> redis.RedisCluster:
    """A blocking client of a Redis Cluster (``JOBQL_RECORDS_CLUSTER``): ``url`` names one
    node or several (:func:`cluster_seeds`), the others are discovered; redis-py follows
    ``-MOVED``/``-ASK`` by itself. A client made while the only seed named is down cannot
    start: name several."""
    first, seeds = cluster_seeds(url)
    nodes = [SyncClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
    kwargs = _common(first, settings, True, True, retry)
    return _SyncCluster.from_url(first, startup_nodes=nodes, **kwargs)


def async_cluster(
    url: str,
    settings: Settings,
    *,
    retry: AsyncRetry | None = None,
    max_connections: int | None = None,
) -> aioredis.RedisCluster:
    """An asyncio client of a Redis Cluster; ``max_connections`` is per node."""
    first, seeds = cluster_seeds(url)
    kwargs = _common(first, settings, True, True, retry)
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
    nodes = [AsyncClusterNode(host, port) for host, port in seeds]
    return _AsyncCluster.from_url(first, startup_nodes=nodes, **kwargs)


def close(client: redis.Redis) -> None:
    """Close a sync client and, for Sentinel, its connections to the sentinels."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    client.close()
    if manager is not None:
        manager.close()


async def aclose(client: aioredis.Redis) -> None:
    """Close an asyncio client and, for Sentinel, its connections to the sentinels."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    await client.aclose()
    if manager is not None:
        await manager.aclose()


# The worker's one client for job records, heartbeats and the reaper: per process, since a
# forked pool child must not share its parent's sockets. Decoded replies; a few quick
# retries heal a connection a Redis restart closed without turning "down" into a hang.
_worker_lock = threading.Lock()
_worker_client: tuple[int, redis.Redis] | None = None


def worker_client() -> redis.Redis:
    """This process's client for the Redis holding job records (decoded replies)."""
    global _worker_client
    with _worker_lock:
        if _worker_client is None or _worker_client[0] != os.getpid():
            settings = get_settings()
            client = sync_client(
                settings.redis,
                settings,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
            )
            _worker_client = (os.getpid(), client)
        return _worker_client[1]


_records_client: tuple[int, redis.Redis] | None = None


def records_client() -> redis.Redis:
    """This process's client for job records: :func:`worker_client`'s Redis, unless
    ``JOBQL_RECORDS_URL`` names another (or a cluster: then a cluster client)."""
    global _records_client
    settings = get_settings()
    if settings.records == settings.redis and not settings.records_cluster:
        return worker_client()
    with _worker_lock:
        if _records_client is None or _records_client[0] != os.getpid():
            retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5)
            client: redis.Redis = (
                sync_cluster(settings.records, settings, retry=retry)  # type: ignore[assignment]
                if settings.records_cluster
                else sync_client(settings.records, settings, retry=retry)
            )
            _records_client = (os.getpid(), client)
        return _records_client[1]
