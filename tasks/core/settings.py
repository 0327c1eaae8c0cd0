"""The one settings object, read from the environment (prefix ``JOBQL_``) and validated at
start-up; the API and the worker both build their configuration from it, so a broker URL is never
written twice. It lives in ``tasks`` because the worker needs it and ``gql`` depends on
``tasks``, never the other way. No other module reads a JobQL setting from ``os.environ``.

The environment stays flat (one ``JOBQL_`` name per setting, as deployments know them), and the
settings fall into groups (:data:`GROUPS`): a part of the code is given its group, read once when
it is built (``Authenticator(settings.auth)``), and sees only what concerns it. Every setting
belongs to exactly one group; ``tests/tasks/core/test_settings.py`` holds the partition and
``docs/guide/settings.md`` to it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.core.slots import Layout


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """Everything JobQL can be told; see ``.env.example`` for each one."""

    model_config = SettingsConfigDict(
        env_prefix="JOBQL_", env_file=".env", extra="ignore", frozen=True
    )

    env: Environment = Environment.DEVELOPMENT
    # ``REDIS_URL`` without the prefix is honoured too: it is what hosting platforms set.
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("JOBQL_REDIS_URL", "REDIS_URL")
    )
    broker_url: str | None = None
    result_backend_url: str | None = None
    broadcast_url: str | None = None
    # Job records and their events (README "Deploying on a Redis Cluster"); by default the
    # Redis above.
    records_url: str | None = None
    # JOBQL_RECORDS_URL names nodes of a Redis/Valkey Cluster, ';'-separated (the others are
    # discovered from whichever answers);
    # events then go out on sharded pub/sub. Celery's broker cannot be that cluster.
    records_cluster: bool = False
    # How many hash tags job records are spread over (tasks.core.slots): 1 on one Redis, 16 on a
    # cluster unless set. Fixed for the life of the records: changing it loses old jobs.
    record_shards: int | None = Field(default=None, ge=1, le=1024)
    # Redis over TLS (``rediss://`` URLs; README "Deploying"): the CA that signed the server's
    # certificate and, for mutual TLS, this client's certificate and key. They apply to every
    # rediss:// URL: job records, broadcast, and Celery's broker and result backend.
    redis_tls_ca_certs: Path | None = None
    redis_tls_certfile: Path | None = None
    redis_tls_keyfile: Path | None = None
    redis_tls_cert_reqs: Literal["required", "optional", "none"] = "required"
    # Sentinel (``sentinel://host:port;sentinel://host:port/db`` URLs, Celery's form): the
    # name of the master the sentinels watch, and the sentinels' own password if they ask one.
    redis_sentinel_master: str | None = None
    redis_sentinel_password: SecretStr | None = None

    # RabbitMQ (tasks.core.rabbitmq): classic queues take the ten JobQL priorities; quorum queues
    # replicate, and take two (RabbitMQ 3.13+) or none (before).
    rabbitmq_queue_type: Literal["classic", "quorum"] = "classic"
    # Celery's messages and results (never pickle); the job records stay JSON.
    serializer: Literal["json", "msgpack"] = "json"
    # Results larger than the threshold are compressed in Celery's result backend.
    compression: Literal["none", "gzip", "zstd"] = "none"
    compression_threshold_bytes: int = Field(default=64 * 1024, ge=0)
    # A result larger than this (as JSON) fails its job as ResultTooLarge, unwritten.
    max_result_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # How often a worker deletes expired results from a database result backend (which,
    # unlike Redis, keeps them until something deletes them); 0 leaves it to celery beat.
    result_cleanup_interval: float = Field(default=3600.0, ge=0)
    # What Celery's result backend gets of each job, for AsyncResult / Flower /
    # django-celery-results users. ``final``: on a Redis backend the outcome is stored once,
    # in the job's record, which AsyncResult reads through JobQL's backend (announced on
    # Celery's channel for ``get()``); elsewhere, the outcome in the backend. ``copy``: the
    # outcome also in Celery's own key, for tools that read the keys (Flower, stock
    # Celery's backend); ``all``: the copy, STARTED and every progress report; ``none``:
    # nothing.
    celery_results: Literal["all", "copy", "final", "none"] = "final"

    task_modules: tuple[str, ...] = ("tasks.examples",)
    default_queue: str = "jobql"
    extra_queues: tuple[str, ...] = ()

    job_retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    # How often each API process takes expired records out of the listing indexes. Pages
    # are exact without it (they skip and drop what expired); it bounds dead entries.
    index_sweep_interval: float = Field(default=60.0, gt=0)
    task_soft_time_limit: float = Field(default=300.0, gt=0)
    task_time_limit: float = Field(default=360.0, gt=0)

    connect_timeout: float = Field(default=1.0, gt=0)
    socket_timeout: float = Field(default=3.0, gt=0)
    producer_threads: int = Field(default=8, ge=1, le=256)
    # Longest a mutation waits for a broker other than the records' Redis to take a message
    # before it answers SERVICE_UNAVAILABLE (a black-holed broker otherwise holds it); and
    # the deadline of the enqueue's script on the records' Redis, which writes nothing once
    # it passed (the API waits 0.5 s more for its reply: gql.services.store).
    publish_timeout: float = Field(default=1.5, gt=0, le=60)
    redis_max_connections: int = Field(default=64, ge=2, le=10_000)
    max_page_size: int = Field(default=100, ge=1, le=1000)
    # Most items one enqueueMany (or <task>Many) may carry; all are recorded in one call.
    max_batch_size: int = Field(default=500, ge=1, le=10_000)
    # Most jobs one retryJobs or cancelJobs acts on; a cursor continues with the next ones.
    max_bulk_size: int = Field(default=500, ge=1, le=10_000)
    # HTTP GraphQL operations executing at once per process; the others wait their turn
    # without queueing work on the event loop (0: unbounded). Fewer keep other requests'
    # latency low under a flood, more batch Redis reads better. Measured on 2 cores under
    # a flood: 2 -> health p99 2.5 ms, job(id) 1.2x the REST baseline; 4 -> 3.1 ms, 1.46x;
    # 8 -> 4.4 ms, 1.6x; unbounded -> ~35 ms. Raise it when your resolvers wait on I/O.
    max_concurrent_operations: int = Field(default=8, ge=0)
    # The API's garbage collector (gql.ops.collector): net allocations between young
    # collections (0: Python's 700), and the least time between full collections, each a
    # stall as long as every live object takes to walk (0: whenever Python's rule says).
    gc_gen0_threshold: int = Field(default=10_000, ge=0)
    gc_full_interval: float = Field(default=300.0, ge=0)
    subscriber_queue_limit: int = Field(default=256, ge=8)
    keep_alive_interval: float = Field(default=15.0, gt=0)
    connection_init_timeout: float = Field(default=10.0, gt=0)
    graphiql: bool = True
    # The live jobs dashboard at /dashboard/ (gql.http.dashboard): a client of this API
    # whose operations are trusted with JOBQL_TRUSTED_DOCUMENTS too.
    dashboard: bool = True
    # FastAPI's OpenAPI document of the plain HTTP routes (health, metrics) at
    # /openapi.json. Off unless asked for; its Swagger UI and ReDoc pages load from a CDN
    # and are never served.
    openapi: bool = False
    # Traces (tasks.core.tracing): FastAPI's native OpenTelemetry (each request's server
    # span) and, with the `otel` extra, the SDK set up from the standard OTEL_* variables in
    # the API and every worker: operations, enqueues, runs, retries, webhook deliveries.
    # Off, it costs nothing; its cost on is in docs/operating/tracing.md.
    opentelemetry: bool = False
    # The speed-ups through libraries' internals (tasks.core.compat); false runs the stock
    # code. Fixes of library bugs stay on either way. ``fast_paths_off`` turns single
    # speed-ups off by name (an A/B, or one that misbehaves): '["hiredis_packing"]'.
    fast_paths: bool = True
    fast_paths_off: list[str] = []

    # Periodic jobs (tasks.worker.beat): beat reads the schedules at least this often (seconds),
    # so a created, changed or disabled schedule takes effect within it.
    beat_interval: float = Field(default=1.0, gt=0, le=60)
    # The beat that holds the lock runs the schedules; if it dies, a standby beat takes
    # over once the lock expired, this many seconds after its last renewal.
    beat_lock_timeout: int = Field(default=10, ge=2, le=3600)
    # Where schedules are kept and which beat scheduler runs them: RedBeat's entries in
    # Redis (tasks.worker.beat), or django-celery-beat's models in a Django project
    # (tasks.django_beat, which must then be in INSTALLED_APPS; gql.django serves them).
    schedule_store: Literal["redis", "django"] = "redis"
    # Schedules one owner may have.
    max_schedules_per_owner: int = Field(default=100, ge=1, le=100_000)

    # Most tasks one runWorkflow may hold, counting every step of every branch.
    workflow_max_steps: int = Field(default=100, ge=1, le=10_000)

    # Webhooks (tasks.worker.webhooks): deliveries are signed with this Standard Webhooks secret,
    # "whsec_" and a base64 key; without one, webhooks are refused.
    webhook_secret: str | None = None
    # The queue the worker delivers webhooks from (consumed like the other queues).
    webhook_queue: str = "jobql.webhooks"
    webhook_timeout: float = Field(default=10.0, gt=0)
    # A failed delivery is retried with exponential backoff from this many seconds...
    webhook_backoff: float = Field(default=2.0, gt=0)
    # ...for at most this long after the first attempt.
    webhook_retry_for: float = Field(default=24 * 3600.0, gt=0)
    # Networks a webhook URL may resolve into although they are private, loopback or
    # link-local (refused by default, so that a caller cannot probe the internal network).
    webhook_allowed_networks: tuple[str, ...] = ()
    # Security (README "Security"): who may call, and how much. `none` is for development.
    # none, or any of jwt, api_key and external (the host application signs callers in:
    # a Django project's users, see gql.django), comma-separated.
    auth_mode: str = "none"
    jwt_secret: SecretStr | None = None  # HS256
    jwt_public_key: str | None = None  # PEM, for RS256 / ES256
    jwks_url: str | None = None  # RS256 / ES256 keys by `kid`, fetched off the event loop
    jwt_algorithms: tuple[str, ...] = ()  # default: HS256 with a secret, else RS256 and ES256
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_leeway_seconds: float = Field(default=0.0, ge=0, le=300)
    # A token whose claim holds this value (a string of space-separated scopes, a list, or
    # true) is an admin's: it sees and touches every owner's jobs.
    jwt_admin_claim: str = "scope"
    jwt_admin_value: str = "jobql:admin"
    # SHA-256 hex digest of each API key -> the owner it acts as. Only hashes, never keys.
    api_keys: dict[str, str] = {}
    admin_owners: tuple[str, ...] = ()  # owners that are admins, however they sign in
    # A WebSocket signed in by the host application's session (``external``: a Django
    # login) is signed in again this often; one whose session ended (a logout) is closed.
    session_recheck_seconds: float = Field(default=30.0, gt=0, le=3600)
    cors_origins: tuple[str, ...] = ()  # also the WebSocket Origin allow-list
    graphql_ws_legacy: bool = True  # the legacy subscriptions-transport-ws protocol
    introspection: bool = True
    csrf_prevention: bool = True
    max_query_depth: int = Field(default=10, ge=1)
    max_aliases: int = Field(default=30, ge=0)
    max_tokens: int = Field(default=2_000, ge=10)
    max_body_bytes: int = Field(default=1_000_000, ge=1_000)
    max_input_bytes: int = Field(default=256_000, ge=100)
    # Operations in one batched POST (Apollo's BatchHttpLink), each admitted on its own (0: off).
    max_operations_per_batch: int = Field(default=10, ge=0)
    # How long an automatic persisted query (APQ) stays in Redis after its last registration.
    persisted_query_ttl_seconds: int = Field(default=86_400, ge=1)
    # Trusted documents: an Apollo persisted-query manifest (persisted-query-manifest.json);
    # set, only its operations run, by id or by text (gql.services.trusted). Unset: any.
    trusted_documents: Path | None = None
    # Mutations per owner per window, shared by every API replica through Redis (0: off).
    # It applies to authenticated owners: in `none` mode every caller is one owner.
    rate_limit_mutations: int = Field(default=300, ge=0)
    rate_limit_window_seconds: float = Field(default=60.0, gt=0)
    # A replica takes up to this many of a busy owner's mutations per Redis call, and at
    # most 1 % of the limit: the slack per replica and owner (1: every mutation asks Redis).
    rate_limit_lease: int = Field(default=32, ge=1)
    max_subscriptions_per_connection: int = Field(default=100, ge=1)
    # Live subscriptions of one owner, counted across every API replica in Redis.
    max_subscriptions_per_owner: int = Field(default=500, ge=1)
    # A replica's count of an owner's live subscriptions outlives the replica this long
    # (it renews it every third of it), so a replica that dies leaks no places for good.
    subscription_lease_seconds: float = Field(default=15.0, ge=0.3, le=3600)

    data_dir: Path = Path("var")
    outbox_dir: Path | None = None

    # Operating (README "Operating"): logs, worker heartbeats, health and shutdown.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A worker writes its heartbeat this often; it counts as gone after three missed ones.
    worker_heartbeat_interval: float = Field(default=2.0, gt=0, le=60)
    # How long one answer of the health checks, and of `workers`/`queues`, is served again:
    # many dashboards probing every second then cost one check per period, not one each.
    health_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    inspect_cache_seconds: float = Field(default=3.0, ge=0, le=300)
    # Reliability (README "Guarantees"). A job whose worker is lost this many times (a
    # pool child or the whole worker killed while running it) is not run again: FAILURE.
    max_worker_losses: int = Field(default=3, ge=0, le=100)
    # A worker whose heartbeat expired and stays missing this much longer is lost: its
    # running jobs are re-queued at once (within heartbeat TTL + this + one interval).
    requeue_lost_after: float = Field(default=5.0, ge=0, le=3600)
    # kombu redelivers any message left unacknowledged this long (seconds): what saves the
    # jobs of a lost worker the heartbeats cannot (a worker on another broker, a job it
    # reserved but had not started). It must exceed the task time limit, or a job still
    # running would be delivered again; an ETA/countdown further away than this is too.
    # Unset: the larger of an hour and twice the task time limit.
    visibility_timeout: int | None = Field(default=None, ge=60)
    # How long a worker keeps trying to write a job's outcome (its record, Celery's result)
    # while Redis is unreachable, before it gives up and logs it.
    redis_outage_tolerance: float = Field(default=30.0, ge=0, le=3600)
    # Celery's task events (task-received, -started, -succeeded...) on the broker's event
    # exchange: what Flower and `celery events` watch. JobQL itself reads none of them (its
    # records and heartbeats say it all), and each costs the worker a publish per change.
    task_events: bool = False
    # SIGTERM: subscribers are told at once, in-flight operations get this long to finish.
    shutdown_grace_seconds: float = Field(default=30.0, gt=0)
    # Where `jobql api --workers N` keeps prometheus-client's per-process files
    # (default: <data_dir>/metrics), so /metrics adds up across the processes.
    metrics_dir: Path | None = None

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env is Environment.PRODUCTION and not self.redis_url:
            raise ValueError("JOBQL_REDIS_URL (or REDIS_URL) must be set in production")
        _check_auth(self)
        _check_redis_shapes(self)
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("JOBQL_TASK_SOFT_TIME_LIMIT must be below JOBQL_TASK_TIME_LIMIT")
        if self.visibility_timeout is not None and self.visibility_timeout <= self.task_time_limit:
            raise ValueError(
                "JOBQL_VISIBILITY_TIMEOUT must exceed JOBQL_TASK_TIME_LIMIT: a job still "
                "running would be delivered to a second worker"
            )
        _check_records(self)
        if self.beat_lock_timeout <= self.beat_interval:
            raise ValueError("JOBQL_BEAT_LOCK_TIMEOUT must exceed JOBQL_BEAT_INTERVAL")
        if self.compression == "zstd":
            _require_zstd()
        if self.serializer == "msgpack":
            _require("msgpack", "JOBQL_SERIALIZER=msgpack needs msgpack (jobql[msgpack])")
        backend = self.result_backend_url or "redis://"
        if self.celery_results == "none" and not backend.startswith(("redis", "unix://")):
            # Celery completes a chord over such a backend by polling its parts' results.
            raise ValueError(
                "JOBQL_CELERY_RESULTS=none needs a Redis result backend: workflows' chords "
                "wait on the stored results of their parts in any other"
            )
        if self.webhook_secret is not None and not self.webhook_secret.startswith("whsec_"):
            raise ValueError("JOBQL_WEBHOOK_SECRET must be a Standard Webhooks secret (whsec_...)")
        return self

    @property
    def auth_methods(self) -> frozenset[str]:
        """``jwt``, ``api_key``, ``external``; empty when authentication is off."""
        return auth_methods(self.auth_mode)

    @property
    def redis(self) -> str:
        """Where job records live; the embedded server sets ``JOBQL_REDIS_URL`` before we start."""
        if not self.redis_url:
            raise RuntimeError("no Redis configured: set REDIS_URL or start through `make run`")
        return self.redis_url

    @property
    def records(self) -> str:
        """Where job records live, and their events are published."""
        return self.records_url or self.redis

    @property
    def shards(self) -> int:
        """How many hash tags job records are spread over (see tasks.core.slots)."""
        return self.record_shards or (16 if self.records_cluster else 1)

    @property
    def layout(self) -> Layout:
        return Layout(shards=self.shards, sharded_pubsub=self.records_cluster)

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis

    @property
    def result_backend(self) -> str:
        return self.result_backend_url or self.redis

    @property
    def broadcast(self) -> str:
        return self.broadcast_url or self.records

    @property
    def queues(self) -> tuple[str, ...]:
        extra = (*self.extra_queues, self.webhook_queue)
        return (self.default_queue, *dict.fromkeys(q for q in extra if q != self.default_queue))

    @property
    def redelivery_after(self) -> int:
        """kombu's visibility timeout: the set one, or an hour and at least twice the limit."""
        return self.visibility_timeout or max(3600, int(self.task_time_limit) * 2)

    @property
    def heartbeat_ttl(self) -> float:
        return self.worker_heartbeat_interval * 3

    @property
    def metrics(self) -> Path:
        return self.metrics_dir or self.data_dir / "metrics"

    @property
    def outbox(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"

    # The groups, built when asked (a ``model_copy(update=...)`` gets its own).
    @property
    def auth(self) -> AuthSettings:
        return _group(AuthSettings, self)

    @property
    def http(self) -> HTTPSettings:
        return _group(HTTPSettings, self)

    @property
    def limits(self) -> LimitSettings:
        return _group(LimitSettings, self)

    @property
    def subscriptions(self) -> SubscriptionSettings:
        return _group(SubscriptionSettings, self)

    @property
    def webhooks(self) -> WebhookSettings:
        return _group(WebhookSettings, self)


_Group = TypeVar("_Group")


def _group(kind: type[_Group], settings: Settings) -> _Group:
    return kind(**{f.name: getattr(settings, f.name) for f in fields(kind)})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Who may call (gql.services.auth): the modes and their keys."""

    auth_mode: str
    jwt_secret: SecretStr | None
    jwt_public_key: str | None
    jwks_url: str | None
    jwt_algorithms: tuple[str, ...]
    jwt_issuer: str | None
    jwt_audience: str | None
    jwt_leeway_seconds: float
    jwt_admin_claim: str
    jwt_admin_value: str
    api_keys: dict[str, str]
    admin_owners: tuple[str, ...]
    session_recheck_seconds: float

    @property
    def methods(self) -> frozenset[str]:
        return auth_methods(self.auth_mode)


def auth_methods(auth_mode: str) -> frozenset[str]:
    """``jwt``, ``api_key``, ``external``; empty when authentication is off."""
    return frozenset(m.strip() for m in auth_mode.split(",")) - {"none", ""}


@dataclass(frozen=True, slots=True)
class HTTPSettings:
    """What ``/graphql`` accepts and serves (gql.http, gql.app): the request's shape and size,
    the document limits, the pages, and how many operations run at once."""

    cors_origins: tuple[str, ...]
    csrf_prevention: bool
    max_body_bytes: int
    max_operations_per_batch: int
    max_concurrent_operations: int
    persisted_query_ttl_seconds: int
    trusted_documents: Path | None
    max_query_depth: int
    max_aliases: int
    max_tokens: int
    introspection: bool
    graphiql: bool
    dashboard: bool
    openapi: bool


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """How much one caller may do (gql.services.limits and the enqueue paths)."""

    auth_mode: str
    rate_limit_mutations: int
    rate_limit_window_seconds: float
    rate_limit_lease: int
    max_subscriptions_per_connection: int
    max_subscriptions_per_owner: int
    subscription_lease_seconds: float
    max_input_bytes: int
    max_batch_size: int
    max_page_size: int
    max_schedules_per_owner: int
    max_bulk_size: int
    workflow_max_steps: int

    @property
    def authenticated(self) -> bool:
        """Per-owner limits apply to signed-in owners only (in ``none`` mode all are one)."""
        return bool(auth_methods(self.auth_mode))


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """How live updates reach clients (gql.live, gql.http.view)."""

    subscriber_queue_limit: int
    keep_alive_interval: float
    connection_init_timeout: float
    graphql_ws_legacy: bool


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """Where and how job events are POSTed (gql.services.webhooks, tasks.worker.webhooks)."""

    webhook_secret: str | None
    webhook_queue: str
    webhook_timeout: float
    webhook_backoff: float
    webhook_retry_for: float
    webhook_allowed_networks: tuple[str, ...]


# Groups read from Settings itself: the connections and records every part uses, the
# worker's (read by tasks.worker from the process's settings when it starts) and the process's.
CONNECTIONS = (
    "redis_url", "broker_url", "result_backend_url", "broadcast_url", "records_url",
    "records_cluster", "record_shards", "redis_tls_ca_certs", "redis_tls_certfile",
    "redis_tls_keyfile", "redis_tls_cert_reqs", "redis_sentinel_master",
    "redis_sentinel_password", "rabbitmq_queue_type", "connect_timeout", "socket_timeout",
    "redis_max_connections", "producer_threads", "publish_timeout",
)  # fmt: skip
JOBS = (
    "task_modules", "default_queue", "extra_queues", "job_retention_seconds",
    "index_sweep_interval", "serializer", "compression", "compression_threshold_bytes",
    "max_result_bytes", "celery_results", "schedule_store",
)  # fmt: skip
WORKER = (
    "task_soft_time_limit", "task_time_limit", "worker_heartbeat_interval", "max_worker_losses",
    "requeue_lost_after", "visibility_timeout", "redis_outage_tolerance", "task_events",
    "beat_interval", "beat_lock_timeout", "result_cleanup_interval",
)  # fmt: skip
PROCESS = (
    "env", "data_dir", "outbox_dir", "metrics_dir", "log_format", "log_level",
    "health_cache_seconds", "inspect_cache_seconds", "shutdown_grace_seconds",
    "gc_gen0_threshold", "gc_full_interval", "opentelemetry", "fast_paths", "fast_paths_off",
)  # fmt: skip
GROUPS: dict[str, tuple[str, ...]] = {
    "connections": CONNECTIONS,
    "jobs": JOBS,
    "auth": tuple(f.name for f in fields(AuthSettings)),
    "http": tuple(f.name for f in fields(HTTPSettings)),
    "limits": tuple(f.name for f in fields(LimitSettings) if f.name != "auth_mode"),
    "subscriptions": tuple(f.name for f in fields(SubscriptionSettings)),
    "webhooks": tuple(f.name for f in fields(WebhookSettings)),
    "worker": WORKER,
    "process": PROCESS,
}
"""Every setting's group, as ``docs/guide/settings.md`` shows them."""


def _check_records(settings: Settings) -> None:
    """A cluster holds records and events only: Celery's Redis transport has no cluster."""
    if not settings.records_cluster:
        return
    if not settings.records_url:
        raise ValueError("JOBQL_RECORDS_CLUSTER needs JOBQL_RECORDS_URL (a node of the cluster)")
    if settings.broadcast_url and settings.broadcast_url != settings.records_url:
        raise ValueError(
            "JOBQL_BROADCAST_URL must be the records' cluster: the scripts that change a "
            "record publish its event in the same step"
        )
    for name, url in (
        ("BROKER", settings.broker_url),
        ("RESULT_BACKEND", settings.result_backend_url),
    ):
        if url == settings.records_url:
            raise ValueError(f"JOBQL_{name}_URL cannot be the Redis Cluster: Celery has no "
                             "cluster support; use a single Redis or RabbitMQ")  # fmt: skip


def _check_redis_shapes(settings: Settings) -> None:
    """Refuse a Sentinel URL without its master's name, and unverified TLS in production."""
    urls = [settings.redis_url, settings.broker_url, settings.result_backend_url,
            settings.broadcast_url, settings.records_url]  # fmt: skip
    schemes = {url.split(":", 1)[0] for url in urls if url}
    if "sentinel" in schemes and not settings.redis_sentinel_master:
        raise ValueError("a sentinel:// URL needs JOBQL_REDIS_SENTINEL_MASTER (the master's name)")
    if settings.env is Environment.PRODUCTION and settings.redis_tls_cert_reqs != "required":
        raise ValueError("JOBQL_REDIS_TLS_CERT_REQS must be 'required' in production")


def _require(module: str, message: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ValueError(message)


def _require_zstd() -> None:
    """kombu registers zstd from ``compression.zstd`` (3.14+) or ``backports.zstd``."""
    from kombu import compression

    if "application/zstd" not in compression.encoders():  # type: ignore[no-untyped-call]
        raise ValueError("JOBQL_COMPRESSION=zstd needs backports.zstd (jobql[zstd]) or Python 3.14")


_AUTH_METHODS = frozenset({"none", "jwt", "api_key", "external"})
_SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"})


def _check_auth(settings: Settings) -> None:
    """Refuse what would let anyone in: no auth in production, keys of the wrong kind."""
    methods = {m.strip() for m in settings.auth_mode.split(",")}
    if not methods <= _AUTH_METHODS or ("none" in methods and len(methods) > 1):
        raise ValueError("JOBQL_AUTH_MODE is none, or jwt, api_key, external comma-separated")
    if settings.env is Environment.PRODUCTION:
        if "none" in methods:
            raise ValueError("JOBQL_AUTH_MODE=none is refused in production")
        if "*" in settings.cors_origins:
            raise ValueError("JOBQL_CORS_ORIGINS=* is refused in production")
    if "jwt" in methods:
        sources = [settings.jwt_secret, settings.jwt_public_key, settings.jwks_url]
        if sum(source is not None for source in sources) != 1:
            raise ValueError(
                "JOBQL_AUTH_MODE=jwt needs exactly one of JOBQL_JWT_SECRET, "
                "JOBQL_JWT_PUBLIC_KEY, JOBQL_JWKS_URL"
            )
        # An HMAC secret with an RSA algorithm, or the reverse, is the key-confusion attack.
        allowed = _SYMMETRIC if settings.jwt_secret is not None else _ASYMMETRIC
        if not set(settings.jwt_algorithms) <= allowed:
            raise ValueError(f"JOBQL_JWT_ALGORITHMS must be among {sorted(allowed)} for that key")
        secret = settings.jwt_secret
        if secret is not None and len(secret.get_secret_value()) < 32:
            raise ValueError("JOBQL_JWT_SECRET must be at least 32 characters")
    if "api_key" in methods and not settings.api_keys:
        raise ValueError("JOBQL_AUTH_MODE=api_key needs JOBQL_API_KEYS (sha256 hex -> owner)")
    for digest in settings.api_keys:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError("JOBQL_API_KEYS keys are lowercase SHA-256 hex digests of keys")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
