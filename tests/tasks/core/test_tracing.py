"""The tracing set-up's parts, in process, on a tracer provider of the test's own (never the
global one): which exporters ``OTEL_TRACES_EXPORTER`` picks, the Redis tracer that stays out of
work done outside a trace, log lines' ids, and the message header a worker's Celery
instrumentation reads."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from celery.app.task import Context
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.celery import celery_getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tasks.core import tracing_sdk
from tasks.core.messages import task_message


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exported: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider


@pytest.mark.parametrize(
    ("environment", "expected"),
    [
        ({}, [OTLPSpanExporter]),  # the specification's default: otlp, over http/protobuf
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp,console"}, [OTLPSpanExporter, ConsoleSpanExporter]),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, [OTLPSpanExporter]),
    ],
)
def test_the_exporters_are_those_the_environment_names(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], expected: list[type]
) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    found = tracing_sdk.exporters()
    try:
        assert [type(e) for e in found] == expected
    finally:
        for exporter in found:
            exporter.shutdown()


def test_an_exporter_not_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")  # its package is apart
    with pytest.raises(RuntimeError, match="otlp_proto_grpc"):
        tracing_sdk.exporters()


def test_redis_spans_exist_only_inside_a_trace(
    provider: TracerProvider, exported: InMemorySpanExporter
) -> None:
    redis_tracer = tracing_sdk.ParentOnlyProvider(provider).get_tracer("redis")
    with redis_tracer.start_as_current_span("BRPOP") as alone:
        assert not alone.get_span_context().is_valid  # a worker's polling: no trace of its own
    assert not redis_tracer.start_span("PING").get_span_context().is_valid
    with (
        provider.get_tracer("jobql").start_as_current_span("run/task") as run,
        redis_tracer.start_as_current_span("EVALSHA") as write,
    ):
        assert write.get_span_context().trace_id == run.get_span_context().trace_id
    assert [s.name for s in exported.get_finished_spans()] == ["EVALSHA", "run/task"]


def test_log_lines_carry_the_current_trace(provider: TracerProvider) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
    assert tracing_sdk.TraceIds().filter(record) and not hasattr(record, "trace_id")
    with provider.get_tracer("jobql").start_as_current_span("op") as span:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "inside", None, None)
        tracing_sdk.TraceIds().filter(record)
    context = span.get_span_context()
    assert record.trace_id == trace.format_trace_id(context.trace_id)
    assert record.span_id == trace.format_span_id(context.span_id)


def test_the_message_writer_puts_the_trace_where_the_celery_instrumentation_reads_it(
    provider: TracerProvider,
) -> None:
    """The worker's run span's parent, as OpenTelemetry's Celery instrumentation finds it at
    ``task_prerun``: in the request, which holds the message's headers as attributes."""
    with provider.get_tracer("jobql").start_as_current_span("apply_async/t") as publish:
        headers = tracing_sdk.Tracing.current_headers()
    assert headers is not None and set(headers) == {"traceparent"}
    message = json.loads(
        task_message(
            task="t", job_id="j", kwargs={}, queue="jobql", now=datetime.now(UTC), trace=headers
        )
    )
    request = Context(message["headers"])
    parent = trace.get_current_span(propagate.extract(request, getter=celery_getter))
    assert parent.get_span_context().trace_id == publish.get_span_context().trace_id
    assert parent.get_span_context().span_id == publish.get_span_context().span_id
