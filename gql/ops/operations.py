"""One log line and a few counter increments per GraphQL operation, from a Strawberry schema
extension around its execution (a subscription's whole life): the line names the operation, its
type, outcome and duration and the jobs it returned or watched, never its variables. Mutations,
subscriptions and failures log at INFO and a successful query at DEBUG, because dashboards poll
queries many times a second and the line would be a fair share of a small query's time
(``JOBQL_LOG_LEVEL=DEBUG`` shows them); ``/metrics`` counts every one either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from gql.ops import metrics
from tasks.core import tracing

logger = logging.getLogger("gql.ops.operations")

# Set by gql.http.pipeline for each exchange: http, multipart, sse, graphql-transport-ws...
TRANSPORT: ContextVar[str] = ContextVar("jobql_transport", default="http")


def _job_ids(data: Any) -> list[str]:
    """Ids of the jobs a result's root fields hold (a job, or a list of them)."""
    found: list[str] = []
    for value in (data or {}).values() if isinstance(data, dict) else ():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict) and isinstance(item.get("id"), str):
                found.append(item["id"])
    return found


class OperationObserver(SchemaExtension):
    def on_operation(self) -> Iterator[None]:
        started = time.perf_counter()
        transport = TRANSPORT.get()
        self._open_on: str | None = None  # the transport a subscription was counted open on
        outcome = "error"
        # With tracing on, the operation's span: a child of the request's (FastAPI's), the
        # parent of its resolvers' work, e.g. an enqueue's publish. One per operation, never
        # per field, and it holds neither the document nor the variables (a job's input).
        with tracing.span("graphql operation") as self._span:
            try:
                yield
                result = self.execution_context.result
                outcome = "error" if result is None or getattr(result, "errors", None) else "ok"
            finally:
                if self._open_on is not None:
                    metrics.SUBSCRIPTIONS.labels(self._open_on).dec()
                if outcome == "error":
                    tracing.failed(self._span, "graphql_error")
                self._record(started, transport, outcome)

    def on_parse(self) -> Iterator[None]:
        """Count a subscription open once its document is parsed: ``on_operation`` begins
        before the parse, when the operation's type is not known yet."""
        yield
        try:
            kind = self.execution_context.operation_type
        except Exception:
            return  # did not parse: answered with an error, never open
        if self._span is not None:
            name = self.execution_context.operation_name
            attributes = {"graphql.operation.type": kind.value}
            if name:
                attributes["graphql.operation.name"] = name
            tracing.rename(self._span, f"{kind.value} {name}" if name else kind.value, attributes)
        if kind is OperationType.SUBSCRIPTION:
            self._open_on = TRANSPORT.get()
            metrics.SUBSCRIPTIONS.labels(self._open_on).inc()

    def _record(self, started: float, transport: str, outcome: str) -> None:
        context = self.execution_context
        seconds = time.perf_counter() - started
        try:
            kind = context.operation_type.value
        except Exception:
            kind = "invalid"
        name = metrics.operation_label(context.operation_name)
        metrics.OPERATIONS.labels(name, kind, outcome).inc()
        metrics.OPERATION_SECONDS.labels(name, kind).observe(seconds)
        level = logging.DEBUG if kind == "query" and outcome == "ok" else logging.INFO
        if not logger.isEnabledFor(level):
            return
        result = context.result
        ids = _job_ids(getattr(result, "data", None))
        if not ids and isinstance(context.variables, dict):
            watched = context.variables.get("id")
            ids = [watched] if isinstance(watched, str) else []
        logger.log(
            level,
            "graphql %s %s",
            kind,
            name,
            extra={
                "operation": name,
                "operation_type": kind,
                "outcome": outcome,
                "transport": transport,
                "duration_ms": round(seconds * 1000, 3),
                "job_id": ",".join(ids) if ids else None,
                "owner": getattr(context.context, "owner", None),
            },
        )


def job_enqueued(fields: dict[str, str]) -> None:
    """Count one job recorded and sent (not an idempotent replay); log it at DEBUG.

    The mutation's own line already carries the job's id, owner and request id at INFO: a
    second line per enqueued job doubled the logging cost of the busiest path (P1).
    """
    metrics.JOBS_ENQUEUED.labels(fields["task"]).inc()
    if not logger.isEnabledFor(logging.DEBUG):
        return
    logger.debug(
        "job enqueued",
        extra={"job_id": fields["id"], "task": fields["task"], "owner": fields["owner"],
               "queue": fields["queue"], "state": fields["state"]},
    )  # fmt: skip
