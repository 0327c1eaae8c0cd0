"""The FastAPI application: GraphQL (and GraphiQL) at /graphql, health probes beside it."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.routing import Mount, Route, WebSocketRoute
from strawberry.subscriptions import GRAPHQL_WS_PROTOCOL
from strawberry.types.field import StrawberryField

from gql.compat import register as compat
from gql.http import dashboard, graphiql
from gql.http.drain import Drain
from gql.http.pipeline import GraphQLPipeline
from gql.http.view import SUBSCRIPTION_PROTOCOLS, JobQLView
from gql.live.broadcast import JobBroadcast, PubSubBackend, RedisPubSubBackend
from gql.live.shards import ShardedPubSubBackend
from gql.ops import metrics
from gql.ops.collector import GarbageCollector
from gql.ops.loop_lag import LoopLag
from gql.schema.root import build_schema
from gql.services.auth import Authenticator, SignIn
from gql.services.health import HealthCheck
from gql.services.jobs import JobService
from gql.services.limits import Limits
from gql.services.persisted import PersistedQueries
from gql.services.producer import Producer
from gql.services.schedule_store import RedisScheduleStore, ScheduleStore
from gql.services.schedules import ScheduleService
from gql.services.store import JobStore, connect, connect_records, sweep_forever
from gql.services.trusted import TrustedDocuments
from gql.services.workers import Broker, WorkerDirectory
from gql.services.workflow_store import WorkflowStore
from gql.services.workflows import WorkflowService
from tasks.core import compat as fast_paths
from tasks.core import slots, tracing
from tasks.core.app import registry
from tasks.core.logs import configure_logging
from tasks.core.settings import Environment, Settings, get_settings

logger = logging.getLogger(__name__)


def load_task_modules(settings: Settings) -> None:
    """Import the task modules so their typed tasks are registered (no I/O happens)."""
    for module in settings.task_modules:
        importlib.import_module(module)


def create_app(
    settings: Settings | None = None,
    *,
    sign_in: SignIn | None = None,
    mutations: Sequence[StrawberryField] = (),
    schedule_store: ScheduleStore | None = None,
) -> FastAPI:
    """The API. A host application (``gql.django``) adds its ``sign_in`` (with
    ``JOBQL_AUTH_MODE=external``) and ``mutations`` of its own to the schema, and keeps the
    schedules where its beat reads them (``schedule_store``; default: RedBeat's entries)."""
    settings = settings or get_settings()
    if schedule_store is None and settings.schedule_store != "redis":
        raise RuntimeError(
            f"JOBQL_SCHEDULE_STORE={settings.schedule_store} needs its store: serve JobQL "
            "from your Django project with gql.django"
        )
    configure_logging(settings)
    # JOBQL_OPENTELEMETRY=true with the `otel` extra: the SDK from OTEL_*, before any span.
    tracing.setup(settings, "api")
    load_task_modules(settings)
    compat.decide_all(settings)
    slots.configure(settings.layout)
    if not settings.auth_methods:
        logger.warning(
            "JOBQL_AUTH_MODE=none: NO AUTHENTICATION, every caller is 'anonymous' and sees "
            "every job. For development only; production refuses it."
        )
    http, subscriptions = settings.http, settings.subscriptions
    trusted = None
    if http.trusted_documents:
        # In development JobQL's GraphiQL page is let through (it marks its requests).
        exempt = settings.env is Environment.DEVELOPMENT and http.graphiql
        # The dashboard's own operations are trusted beside the deployment's.
        built = dashboard.manifest() if http.dashboard else None
        manifests = (http.trusted_documents, *([built] if built else []))
        trusted = TrustedDocuments.load(*manifests, graphiql_exempt=exempt)
    if trusted is not None:
        logger.info("trusted documents: only the %d operations of %s run", len(trusted),
                    http.trusted_documents)  # fmt: skip
    drain = Drain()
    loop_lag = LoopLag()
    collector = GarbageCollector(settings.gc_gen0_threshold, settings.gc_full_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        records = connect_records(settings)
        # Heartbeats, queues, rate limits: the single Redis, when records are elsewhere.
        redis = records if settings.records == settings.redis else connect(settings.redis, settings)
        backend: PubSubBackend = (
            ShardedPubSubBackend(settings.broadcast, settings=settings)
            if settings.records_cluster
            else RedisPubSubBackend(settings.broadcast, settings=settings)
        )
        broadcast = JobBroadcast(backend, queue_limit=subscriptions.subscriber_queue_limit)
        await broadcast.connect()
        producer = Producer(settings)
        store = JobStore(records, settings)
        app.state.jobs = JobService(settings, store, producer, registry)
        workflow_store = WorkflowStore(store, settings.job_retention_seconds)
        app.state.workflows = WorkflowService(app.state.jobs, workflow_store)
        # Schedules live where beat reads them: RedBeat's at JOBQL_REDIS_URL (never a
        # cluster), or the host's own store (django-celery-beat's tables under gql.django).
        schedules = schedule_store or RedisScheduleStore(redis)
        app.state.schedules = ScheduleService(app.state.jobs, schedules)
        app.state.limits = Limits(settings.limits, redis)
        await app.state.limits.start()
        broker = Broker(settings, redis)
        queues = frozenset({*settings.queues, *(s.queue for s in registry.typed if s.queue)})
        app.state.health = HealthCheck(
            records,
            backend,
            producer,
            settings.connect_timeout,
            broker=broker,
            directory=WorkerDirectory(settings, redis, broker, queues),
            cache_seconds=settings.health_cache_seconds,
        )
        app.state.broadcast = broadcast
        app.state.records = records
        # Persisted queries: the manifest's alone with trusted documents, else APQ in Redis.
        app.state.persisted = trusted or PersistedQueries(records, http.persisted_query_ttl_seconds)
        await app.state.health.verify_at_startup()
        drain.install()
        collector.start()
        sweeper = asyncio.create_task(sweep_forever(store, settings.index_sweep_interval))
        counting = asyncio.create_task(metrics.sync_forever(broadcast))
        loop_lag.start()
        logger.info("JobQL API ready; GraphQL at /graphql")
        try:
            yield
        finally:
            sweeper.cancel()
            counting.cancel()
            loop_lag.stop()
            collector.stop()
            metrics.process_exited()
            await app.state.limits.close()
            producer.close()
            await broker.close()
            await broadcast.disconnect()
            await records.aclose()
            if redis is not records:
                await redis.aclose()

    # FastAPI's native OpenTelemetry makes each request's server span (and WebSocket's),
    # on whatever provider is set: JobQL's (tasks.core.tracing) or the host's. It never sets
    # one up itself: two set-ups would export every span twice.
    telemetry = settings.opentelemetry
    app = FastAPI(
        title="JobQL",
        # Nothing a deployment did not ask for: no Swagger UI or ReDoc (CDN pages), and
        # the OpenAPI document only with JOBQL_OPENAPI.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if http.openapi else None,
        lifespan=lifespan,
        telemetry={
            "tracing": telemetry,
            "metrics": telemetry,
            "logs": telemetry,
            "auto_configure": False,
        },
    )
    protocols = tuple(
        p
        for p in SUBSCRIPTION_PROTOCOLS
        if subscriptions.graphql_ws_legacy or p != GRAPHQL_WS_PROTOCOL
    )
    authenticator = Authenticator(settings.auth, sign_in)
    view = JobQLView(
        build_schema(registry, settings, mutations, trusted),
        authenticator=authenticator,
        graphql_ide="graphiql" if http.graphiql else None,
        subscription_protocols=protocols,
        keep_alive=True,
        keep_alive_interval=subscriptions.keep_alive_interval,
        connection_init_wait_timeout=timedelta(seconds=subscriptions.connection_init_timeout),
        max_concurrent=http.max_concurrent_operations,
        max_batch=http.max_operations_per_batch,
        # Every operation in flight on one socket; subscriptions alone are capped at half
        # of it by gql.services.limits, with a RATE_LIMITED code.
        max_subscriptions_per_connection=2 * settings.limits.max_subscriptions_per_connection,
        allowed_origins=http.cors_origins,
    )
    endpoint = GraphQLPipeline(view, drain, http)
    app.router.routes += [
        Route("/graphql", endpoint, methods=["GET", "POST"], include_in_schema=False),
        WebSocketRoute("/graphql", endpoint),
        Route("/metrics", metrics.metrics, methods=["GET"], include_in_schema=False),
    ]
    if http.graphiql:
        app.router.routes.append(Mount(graphiql.ASSETS_PATH, graphiql.assets(), name="graphiql"))
    if http.dashboard:
        app.router.routes += dashboard.routes()
    if http.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(http.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=[
                "authorization",
                "content-type",
                "apollo-require-preflight",
                "x-apollo-operation-name",
            ],
            max_age=600,
        )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/graphql")

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        """The process answers: its event loop is not stuck."""
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready(request: Request) -> Any:
        """Jobs can be accepted and will run: broker, Redis and the broadcast answer (with
        their latency), and every known queue has a live worker. 503 says which is not."""
        ok, body = await request.app.state.health.ready()
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/health/stats")
    async def stats(request: Request, loop_lag_seconds: int | None = None) -> dict[str, Any]:
        """Live subscriptions and what they hold (channels, queued events, asyncio tasks),
        events delivered and coalesced, whether the process is draining, and which fast
        paths are on, with how often each fell back to the stock path; the event loop's
        longest stalls of late (``gql.ops.loop_lag``; ``?loop_lag_seconds=N`` adds the last N s)."""
        broadcast = request.app.state.broadcast
        return {
            **broadcast.stats(),
            "tasks": len(asyncio.all_tasks()),
            "events_delivered": broadcast.tally.delivered,
            "events_coalesced": broadcast.tally.coalesced,
            "draining": drain.draining,
            "fast_paths": fast_paths.report(),
            "loop_lag_ms": loop_lag.report(loop_lag_seconds),
        }

    return app
