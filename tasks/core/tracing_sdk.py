"""OpenTelemetry's SDK and instrumentations, set up once per process by
:func:`tasks.core.tracing.setup` (imported only there, with ``JOBQL_OPENTELEMETRY=true`` and the
``otel`` extra installed).

The SDK reads the standard ``OTEL_*`` variables itself: the resource (``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``), the sampler (``OTEL_TRACES_SAMPLER[_ARG]``), span limits, the batch
processor's schedule (``OTEL_BSP_*``), and each exporter its endpoint, headers, timeout and
compression (``OTEL_EXPORTER_OTLP_*``). This module only picks the exporters that
``OTEL_TRACES_EXPORTER`` names (default ``otlp``, over ``http/protobuf`` unless
``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says ``grpc``), through the SDK's entry points: the SDK's
own configurator for that is private and would also install meter and logger providers that
JobQL does not feed. A tracer provider someone else set already (``opentelemetry-instrument``, a
host application) is used as it is.

Then, in every process, the redis instrumentation, on a tracer that makes a span only inside a
trace (a worker's heartbeat, the broker's polling and the API's background loops would each
start a trace per command otherwise), and the ``trace_id``/``span_id`` of log lines; in a worker,
OpenTelemetry's Celery instrumentation (the run span from the message's headers, a retry's and
a webhook's publish); in the API, a ``before_task_publish`` receiver that puts the current trace
into the messages Celery's own producer sends (another broker, a workflow, a webhook of a
cancel). The API does not install the Celery instrumentation: most of its messages never pass
its hooks (the message writer), JobQL's own publish span (:func:`tasks.core.tracing.publishing`)
covers both ways of sending alike, and for a task the API does not declare (the webhook
delivery) the instrumentation's publish span ends when its context manager is collected, before
the message is sent.
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (``redis``, ``celery``) leaves any of them out.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib.metadata import entry_points
from typing import Any

from celery.signals import before_task_publish
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes

from tasks.core import logs

logger = logging.getLogger(__name__)

KINDS = {
    "internal": SpanKind.INTERNAL,
    "server": SpanKind.SERVER,
    "client": SpanKind.CLIENT,
    "producer": SpanKind.PRODUCER,
    "consumer": SpanKind.CONSUMER,
}
FLUSH_AT_EXIT_SECONDS = 3.0

# OTEL_TRACES_EXPORTER=otlp, by OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL: the entry points of the
# OTLP exporters' packages (the `otel` extra brings the HTTP one; gRPC's is installed apart).
OTLP_EXPORTERS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}


def exporters() -> list[SpanExporter]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names, each built from its own ``OTEL_*``."""
    found: list[SpanExporter] = []
    for given in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(","):
        name = given.strip().lower()
        if name in ("", "none"):
            continue
        if name == "otlp":
            protocol = (
                os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip()
            if protocol not in OTLP_EXPORTERS:
                raise RuntimeError(f"unknown OTLP protocol {protocol!r}: http/protobuf or grpc")
            name = OTLP_EXPORTERS[protocol]
        points = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not points:
            raise RuntimeError(
                f"OTEL_TRACES_EXPORTER names {given.strip()!r}, and no installed package "
                f"provides the span exporter {name!r}"
            )
        found.append(next(iter(points)).load()())
    return found


def install_provider(role: str) -> trace.TracerProvider:
    """The SDK's tracer provider from the environment, set globally; or the one already set."""
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        logger.info("tracing: using the tracer provider already set (%s)", type(current).__name__)
        return current
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: f"jobql-{role}"}))
    provider = TracerProvider(resource=resource)
    chosen = exporters()
    for exporter in chosen:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info(
        "tracing: service %s, exporting to %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(type(e).__name__ for e in chosen) or "nothing (OTEL_TRACES_EXPORTER=none)",
    )
    return provider


class ParentOnlyTracer(trace.Tracer):
    """A tracer whose spans exist only inside a trace: with no valid parent it gives the
    invalid span (nothing recorded, nothing exported), as with a sampler that drops roots."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]  # the API's decorator is private
        self, name: str, context: Any = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        if not trace.get_current_span(context).get_span_context().is_valid:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span


class ParentOnlyProvider(trace.TracerProvider):
    """Gives :class:`ParentOnlyTracer` over ``provider``'s tracers (for one instrumentation)."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self._provider = provider

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return ParentOnlyTracer(self._provider.get_tracer(*args, **kwargs))


class TraceIds(logging.Filter):
    """Stamps a log line with the trace and span current when it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = trace.format_trace_id(context.trace_id)
                record.span_id = trace.format_span_id(context.span_id)
        return True


def inject_into_message(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: the current trace into a message Celery's producer sends (the
    API's), where OpenTelemetry's Celery instrumentation reads it on the worker."""
    if headers is not None and "traceparent" not in headers:
        propagate.inject(headers)


def disabled_instrumentations() -> set[str]:
    value = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return {name.strip() for name in value.split(",") if name.strip()}


class Tracing:
    """The set-up SDK, as :mod:`tasks.core.tracing` uses it."""

    def __init__(self, provider: trace.TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("jobql")

    @classmethod
    def start(cls, role: str) -> Tracing:
        provider = install_provider(role)
        disabled = disabled_instrumentations()
        if "redis" not in disabled:
            from opentelemetry.instrumentation.redis import RedisInstrumentor

            RedisInstrumentor().instrument(tracer_provider=ParentOnlyProvider(provider))
        if role == "worker" and "celery" not in disabled:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]
        if role == "api":
            before_task_publish.connect(inject_into_message, weak=False)
        logs.add_line_filter(TraceIds())
        return cls(provider)

    def shutdown(self) -> None:
        """Export what is buffered, waiting at most a few seconds: the process exits next
        (a pool process by ``os._exit``), and an unreachable collector must not hold up a
        worker's shutdown for the exporter's timeout and its retries."""
        # On a thread of its own: the SDK's force_flush ignores its timeout (1.45), and its
        # shutdown waits up to 30 s for the export thread.
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            stopping = threading.Thread(target=shutdown, name="jobql-tracing-exit", daemon=True)
            stopping.start()
            stopping.join(FLUSH_AT_EXIT_SECONDS)

    def span(
        self, name: str, kind: str, attributes: Attributes
    ) -> AbstractContextManager[trace.Span]:
        return self.tracer.start_as_current_span(name, kind=KINDS[kind], attributes=attributes)

    @staticmethod
    def failed(span: trace.Span, error: str) -> None:
        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR))

    @staticmethod
    def current_headers() -> dict[str, str] | None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier or None

    @staticmethod
    def current_trace_id() -> str | None:
        context = trace.get_current_span().get_span_context()
        return trace.format_trace_id(context.trace_id) if context.is_valid else None
