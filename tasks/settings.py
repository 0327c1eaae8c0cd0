"""The one settings object: read from the environment (prefix ``JOBQL_``), validated at start-up.

The API and the worker both build their configuration from it, so a broker URL is never
written twice. It lives in ``tasks`` because the worker needs it and ``gql`` depends on
``tasks``, never the other way. Nothing else in the project reads ``os.environ``.
"""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    redis_max_connections: int = Field(default=64, ge=2, le=10_000)
    max_page_size: int = Field(default=100, ge=1, le=1000)
    # Most items one enqueueMany (or <task>Many) may carry; all are recorded in one call.
    max_batch_size: int = Field(default=500, ge=1, le=10_000)
    # HTTP GraphQL operations executing at once per process; the others wait their turn
    # without queueing work on the event loop (0: unbounded). Fewer keep other requests'
    # latency low under a flood, more batch Redis reads better. Measured on 2 cores under
    # a flood: 2 -> health p99 2.5 ms, job(id) 1.2x the REST baseline; 4 -> 3.1 ms, 1.46x;
    # 8 -> 4.4 ms, 1.6x; unbounded -> ~35 ms. Raise it when your resolvers wait on I/O.
    max_concurrent_operations: int = Field(default=8, ge=0)
    # Allocations between young-generation collections in the API (0: Python's default).
    gc_gen0_threshold: int = Field(default=100_000, ge=0)
    subscriber_queue_limit: int = Field(default=256, ge=8)
    keep_alive_interval: float = Field(default=15.0, gt=0)
    connection_init_timeout: float = Field(default=10.0, gt=0)
    graphiql: bool = True
    # FastAPI's native OpenTelemetry. Off, it costs nothing; on, FastAPI checks for
    # configured providers on every request (~3% of a small query's CPU, measured).
    opentelemetry: bool = False
    # Every use of a library's internals (see tasks.compat); false runs stock behaviour.
    fast_paths: bool = True

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
    # SIGTERM: subscribers are told at once, in-flight operations get this long to finish.
    shutdown_grace_seconds: float = Field(default=30.0, gt=0)
    # Where `jobql api --workers N` keeps prometheus-client's per-process files
    # (default: <data_dir>/metrics), so /metrics adds up across the processes.
    metrics_dir: Path | None = None

    @model_validator(mode="after")
    def _refuse_unsafe_production(self) -> Settings:
        if self.env is Environment.PRODUCTION and not self.redis_url:
            raise ValueError("JOBQL_REDIS_URL (or REDIS_URL) must be set in production")
        if self.task_soft_time_limit >= self.task_time_limit:
            raise ValueError("JOBQL_TASK_SOFT_TIME_LIMIT must be below JOBQL_TASK_TIME_LIMIT")
        return self

    @property
    def redis(self) -> str:
        """Where job records live; the embedded server sets ``JOBQL_REDIS_URL`` before we start."""
        if not self.redis_url:
            raise RuntimeError("no Redis configured: set REDIS_URL or start through `make run`")
        return self.redis_url

    @property
    def broker(self) -> str:
        return self.broker_url or self.redis

    @property
    def result_backend(self) -> str:
        return self.result_backend_url or self.redis

    @property
    def broadcast(self) -> str:
        return self.broadcast_url or self.redis

    @property
    def queues(self) -> tuple[str, ...]:
        return (self.default_queue, *(q for q in self.extra_queues if q != self.default_queue))

    @property
    def heartbeat_ttl(self) -> float:
        return self.worker_heartbeat_interval * 3

    @property
    def metrics(self) -> Path:
        return self.metrics_dir or self.data_dir / "metrics"

    @property
    def outbox(self) -> Path:
        return self.outbox_dir or self.data_dir / "outbox"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
