"""Traces, from the request that enqueues a job to the worker's run and the webhook delivery: what
the rest of JobQL calls, free when tracing is off. Nothing here imports OpenTelemetry; with
``JOBQL_OPENTELEMETRY=true`` and the ``otel`` extra installed, :func:`setup` (the API's
``create_app``, a worker's start) loads :mod:`tasks.core.tracing_sdk`, which configures the SDK
from the standard ``OTEL_*`` variables, and every function below goes through it.

The API writes Celery's messages itself (:mod:`tasks.core.messages`), so the hook OpenTelemetry's
Celery instrumentation puts a trace into a message with (``before_task_publish``) never runs for
them: :func:`current_headers` gives the W3C ``traceparent``/``tracestate`` headers the message
writer adds, where that instrumentation reads them on the worker (a message header becomes an
attribute of the task's request).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from tasks.core.settings import Settings
    from tasks.core.tracing_sdk import Tracing

logger = logging.getLogger(__name__)

Role = Literal["api", "worker"]
Kind = Literal["internal", "server", "client", "producer", "consumer"]

_sdk: Tracing | None = None  # set by setup(): tracing is on
_NO_SPAN: AbstractContextManager[Any] = nullcontext()


def setup(settings: Settings, role: Role) -> bool:
    """Turn tracing on in this process as ``settings`` ask; whether it is on. Once per process:
    the providers are global, and a second call changes nothing."""
    global _sdk
    if _sdk is not None or not settings.opentelemetry:
        return _sdk is not None
    try:
        from tasks.core.tracing_sdk import Tracing
    except ImportError as exc:
        # FastAPI's own spans still go to a provider set up by someone else (the API).
        logger.warning(
            "JOBQL_OPENTELEMETRY=true, but OpenTelemetry's SDK is not installed (the `otel` "
            "extra): JobQL exports no traces (%s)",
            exc,
        )
        return False
    _sdk = Tracing.start(role)
    return True


def enabled() -> bool:
    return _sdk is not None


def shutdown() -> None:
    """Export what is still buffered (a worker's pool process, before it exits)."""
    if _sdk is not None:
        _sdk.shutdown()


def span(
    name: str, kind: Kind = "internal", attributes: dict[str, Any] | None = None
) -> AbstractContextManager[Any]:
    """A span, current inside the ``with``, that records an exception raised through it; the
    span is what ``as`` gives (None with tracing off)."""
    if _sdk is None:
        return _NO_SPAN
    return _sdk.span(name, kind, attributes)


def publishing(task: str, jobs: int = 1) -> AbstractContextManager[Any]:
    """The span of an enqueue: its record and message written (one Redis call) or sent by
    Celery's producer. Named as OpenTelemetry's Celery instrumentation names a publish (its own
    in a worker: a retry, a webhook's delivery); every message written inside it carries it
    (:func:`current_headers`), so each run on a worker is its child. ``task`` is "batch" for an
    ``enqueueMany`` of several tasks."""
    if _sdk is None:
        return _NO_SPAN
    attributes: dict[str, Any] = {"celery.action": "apply_async", "celery.task_name": task}
    if jobs != 1:
        attributes["messaging.batch.message_count"] = jobs
    return _sdk.span(f"apply_async/{task}", "producer", attributes)


def published(span: Any, job_id: str) -> None:
    """Name the one job a publish span sent, once its id is known."""
    if span is not None:
        span.set_attribute("messaging.message.id", job_id)


def rename(span: Any, name: str, attributes: dict[str, Any] | None = None) -> None:
    """A span's name (and attributes) once known, e.g. an operation's after its parse."""
    if span is not None:
        span.update_name(name)
        if attributes:
            span.set_attributes(attributes)


def failed(span: Any, error: str) -> None:
    """Mark a span as failed without an exception (a GraphQL result with errors)."""
    if _sdk is not None and span is not None:
        _sdk.failed(span, error)


def current_headers() -> dict[str, str] | None:
    """The current trace as message or request headers (``traceparent``, ``tracestate`` and
    whatever else ``OTEL_PROPAGATORS`` names); None with tracing off or no span current."""
    if _sdk is None:
        return None
    return _sdk.current_headers()


def current_trace_id() -> str | None:
    """The current trace's id (32 hex digits), as trace back ends show it; None without one."""
    if _sdk is None:
        return None
    return _sdk.current_trace_id()
