"""The FastAPI application: GraphQL (and GraphiQL) at /graphql, health probes beside it."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from strawberry.fastapi import GraphQLRouter

from gql.context import Context
from gql.health import HealthCheck
from gql.jobs import JobService
from gql.producer import Producer
from gql.schema import build_schema
from gql.store import JobStore, connect
from tasks.app import registry
from tasks.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def load_task_modules(settings: Settings) -> None:
    """Import the task modules so their typed tasks are registered (no I/O happens)."""
    for module in settings.task_modules:
        importlib.import_module(module)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    load_task_modules(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        records = connect(settings.redis, settings)
        broadcast = (
            records
            if settings.broadcast == settings.redis
            else connect(settings.broadcast, settings)
        )
        producer = Producer(settings)
        app.state.jobs = JobService(settings, JobStore(records, settings), producer, registry)
        app.state.health = HealthCheck(records, broadcast, producer, settings.connect_timeout)
        logger.info("JobQL API ready; GraphQL at /graphql")
        try:
            yield
        finally:
            producer.close()
            await records.aclose()
            if broadcast is not records:
                await broadcast.aclose()

    async def context(request: Request) -> Context:
        state = request.app.state
        return Context(jobs=state.jobs, health=state.health)

    app = FastAPI(title="JobQL", lifespan=lifespan)
    graphql: GraphQLRouter[Context, None] = GraphQLRouter(
        build_schema(registry),
        graphql_ide="graphiql" if settings.graphiql else None,
        context_getter=context,
    )
    app.include_router(graphql, prefix="/graphql")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/graphql")

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        """The process answers: its event loop is not stuck."""
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready(request: Request) -> Any:
        """Jobs can be accepted now: Redis and the broker answer."""
        ok = await request.app.state.health.ready()
        return JSONResponse({"status": "ok" if ok else "unavailable"}, 200 if ok else 503)

    return app
