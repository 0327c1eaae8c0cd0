"""One trace from the HTTP request to the worker's run and the webhook delivery, across real
processes: this module's own Valkey, worker and API, with ``JOBQL_OPENTELEMETRY=true`` and the
standard ``OTEL_*`` variables, exporting over OTLP/HTTP to a collector in the test process
(:mod:`tests.support.otlp`)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, GraphQL, running_api, running_worker, service_env
from tests.live.test_webhooks import Receiver
from tests.support.clients import TRANSPORTS, graphql_transport_ws
from tests.support.otlp import Collector, Span, running_collector

# The RabbitMQ pass runs it again: the API then sends through Celery's producer, not its writer.
pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

SEND = """
mutation SendIt($i: SendEmailInput!, $o: EnqueueOptions) {
  sendEmail(input: $i, options: $o) { id traceId }
}
"""
WATCH = "subscription Watch($id: ID!) { job(id: $id) { id state done traceId } }"


@dataclass(frozen=True)
class Traced:
    api: GraphQL
    collector: Collector
    data_dir: Path


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    data_dir = tmp_path_factory.mktemp("tracing")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    try:
        with running_collector() as collector:
            env = service_env(
                valkey.url,
                data_dir,
                JOBQL_OPENTELEMETRY="true",
                JOBQL_LOG_FORMAT="json",
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
                OTEL_BSP_SCHEDULE_DELAY="100",  # ms: spans reach the collector at once
            )
            # The worker keeps the default service name; the API is named by OTEL_SERVICE_NAME.
            api_env = {**env, "OTEL_SERVICE_NAME": "jobql-api-under-test"}
            settings = Settings(redis_url=valkey.url)
            with (
                running_worker(env, data_dir, settings, concurrency=1),
                running_api(api_env, data_dir) as api,
            ):
                yield Traced(api, collector, data_dir)
    finally:
        valkey.stop()


def _one(spans: list[Span], **match: Any) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


def _tree(spans: list[Span]) -> str:
    """The trace as an indented tree of ``service: kind name``, children by start time."""
    ids = {s.span_id for s in spans}
    lines: list[str] = []

    def walk(below: list[Span], depth: int) -> None:
        for span in below:
            lines.append(f"{'  ' * depth}{span.service}: {span.kind} {span.name}")
            walk([s for s in spans if s.parent_id == span.span_id], depth + 1)

    walk([s for s in spans if s.parent_id not in ids], 0)
    return "\n".join(lines)


def _log_lines(data_dir: Path, prefix: str) -> list[dict[str, Any]]:
    lines = []
    for path in data_dir.glob(f"{prefix}*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
    return lines


async def test_one_trace_from_the_request_to_the_worker_and_the_webhook(traced: Traced) -> None:
    trace_id, caller = os.urandom(16).hex(), os.urandom(8).hex()
    receiver = Receiver([])
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    try:
        async with AsyncGraphQL(traced.api.base_url) as client:
            variables = {
                # One transient failure: the job runs twice, the second run after a retry.
                "i": {
                    "to": "ada@example.com",
                    "subject": "Hi",
                    "body": "Hello",
                    "simulateTransientFailures": 1,
                },
                "o": {"webhook": {"url": receiver.url, "events": ["SUCCESS"]}},
            }
            response = await client.http.post(
                "/graphql",
                json={"query": SEND, "variables": variables},
                headers={"traceparent": f"00-{trace_id}-{caller}-01"},
            )
            assert response.status_code == 200, response.text
            job = response.json()["data"]["sendEmail"]
            # The job's record holds the trace it was enqueued in; its subscription too.
            assert job["traceId"] == trace_id
            stream = await graphql_transport_ws(
                traced.api.base_url, WATCH, {"id": job["id"]}, within=30
            )
            assert stream.completed and stream.jobs[-1]["state"] == "SUCCESS", stream.results
            assert {seen["traceId"] for seen in stream.jobs} == {trace_id}
            await receiver.wait_for(1)
            # Every other transport's subscription too (each runs its operation's span in
            # its own way: a detached context would show as an error in the API's log).
            for name, transport in TRANSPORTS.items():
                seen = await transport(traced.api.base_url, WATCH, {"id": job["id"]}, within=10)
                assert seen.completed and seen.jobs[-1]["traceId"] == trace_id, (name, seen)
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()

    def complete(spans: list[Span]) -> bool:
        return any(s.name == "POST" and s.kind == "client" for s in spans)

    spans = traced.collector.wait_for(trace_id, complete)
    print(_tree(spans))  # noqa: T201
    api, worker = "jobql-api-under-test", "jobql-worker"
    server = _one(spans, kind="server", service=api)
    operation = _one(spans, name="mutation SendIt")
    publish = _one(spans, name="apply_async/send_email", service=api)
    runs = [s for s in spans if s.name == "run/send_email"]
    retry = _one(spans, name="apply_async/send_email", service=worker)
    webhook_publish = _one(spans, name="apply_async/jobql.deliver_webhook")
    delivery = _one(spans, name="run/jobql.deliver_webhook")
    post = _one(spans, name="POST", kind="client")
    # The caller's span is the server span's parent: the trace is the caller's.
    assert (server.name, server.parent_id) == ("POST /graphql", caller)
    assert operation.parent_id == server.span_id
    assert operation.attributes["graphql.operation.type"] == "mutation"
    assert (publish.kind, publish.parent_id) == ("producer", operation.span_id)
    assert publish.attributes["messaging.message.id"] == job["id"]
    # The enqueue: record and message in one Redis call (the create script), in the publish
    # (the API's first call also loads the script).
    writes = [s for s in spans if s.service == api and s.parent_id == publish.span_id]
    assert {s.kind for s in writes} == {"client"} and "EVALSHA" in [s.name for s in writes]
    # The worker's runs: the first from the API's message, the second from its retry's.
    assert [(r.service, r.kind) for r in runs] == [(worker, "consumer")] * 2
    assert runs[0].parent_id == publish.span_id
    assert retry.parent_id == runs[0].span_id
    assert runs[1].parent_id == retry.span_id
    assert runs[0].attributes.get("celery.retry.reason"), runs[0].attributes
    # The webhook: scheduled by the second run, delivered by a run of its own, POSTed.
    assert webhook_publish.parent_id == runs[1].span_id
    assert delivery.parent_id == webhook_publish.span_id
    assert post.parent_id == delivery.span_id
    assert post.attributes["http.response.status_code"] == 200
    headers, _ = receiver.received[0]
    assert headers["traceparent"] == f"00-{trace_id}-{post.span_id}-01"
    # Every other trace began with a request too (the subscription's WebSocket): none with
    # a Redis command of a loop of the worker's or the API's own (heartbeats, the broker's).
    everything = list(traced.collector.spans)
    ids = {s.span_id for s in everything}
    others = [s for s in everything if s.trace_id != trace_id]
    print(_tree(others))  # noqa: T201
    assert {s.kind for s in others if s.parent_id not in ids} == {"server"}, _tree(others)
    watches = [s for s in others if s.name == "subscription Watch"]
    parents = sorted(_one(others, span_id=watch.parent_id).name for watch in watches)
    assert parents == ["POST /graphql"] * 2 + ["WS /graphql"] * 3, parents  # SSE, multipart; WS

    # JSON log lines carry the trace and span current when they were written.
    mutation_line = next(
        line for line in _log_lines(traced.data_dir, "api-")
        if line.get("operation") == "SendIt"
    )  # fmt: skip
    assert (mutation_line["trace_id"], mutation_line["span_id"]) == (trace_id, operation.span_id)
    worker_lines = [
        line for line in _log_lines(traced.data_dir, "worker-") if line.get("job_id") == job["id"]
    ]
    assert worker_lines and {line.get("trace_id") for line in worker_lines} == {trace_id}
    assert not [
        line for line in _log_lines(traced.data_dir, "") if "detach" in line.get("message", "")
    ]
