"""A small OpenTelemetry collector for the tests: an HTTP server on loopback that takes OTLP/HTTP
trace exports (protobuf, ``POST /v1/traces``) as the SDK's exporter sends them, decodes each
``ExportTraceServiceRequest`` with opentelemetry-proto and keeps its spans.

``python -m tests.support.otlp [--port 4318]`` runs one on its own (for ``bench.run`` with
tracing on), printing how many spans it received every few seconds.
"""

from __future__ import annotations

import argparse
import gzip
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanMessage

KINDS = {
    SpanMessage.SPAN_KIND_INTERNAL: "internal",
    SpanMessage.SPAN_KIND_SERVER: "server",
    SpanMessage.SPAN_KIND_CLIENT: "client",
    SpanMessage.SPAN_KIND_PRODUCER: "producer",
    SpanMessage.SPAN_KIND_CONSUMER: "consumer",
}


def _value(value: AnyValue) -> Any:
    field = value.WhichOneof("value")
    return getattr(value, field) if field else None


@dataclass(frozen=True)
class Span:
    """One received span, ids as the W3C headers write them (hex)."""

    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    start_ns: int

    @classmethod
    def of(cls, service: str, span: SpanMessage) -> Span:
        return cls(
            service=service,
            name=span.name,
            kind=KINDS.get(span.kind, "unspecified"),
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_id=span.parent_span_id.hex(),
            attributes={a.key: _value(a.value) for a in span.attributes},
            status=span.status.code,
            start_ns=span.start_time_unix_nano,
        )


class Collector:
    """Every span exported to :attr:`endpoint` (``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                encoding = (self.headers.get("content-encoding") or "").lower()
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest.FromString(body)
                collector.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                received += [Span.of(service, span) for span in scope_spans.spans]
        with self._lock:
            self.spans += received
            self.requests += 1

    def trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            found = [s for s in self.spans if s.trace_id == trace_id]
        return sorted(found, key=lambda s: s.start_ns)

    def wait_for(
        self, trace_id: str, done: Callable[[list[Span]], bool], within: float = 20
    ) -> list[Span]:
        """The trace's spans once ``done`` holds for them (they arrive in batches)."""
        deadline = time.monotonic() + within
        while True:
            spans = self.trace(trace_id)
            if done(spans):
                return spans
            assert time.monotonic() < deadline, "\n".join(map(str, spans)) or "no span"
            time.sleep(0.05)


@contextmanager
def running_collector(port: int = 0) -> Iterator[Collector]:
    collector = Collector() if not port else _on_port(port)
    thread = threading.Thread(target=collector.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        collector.server.shutdown()
        collector.server.server_close()


def _on_port(port: int) -> Collector:
    collector = Collector()
    collector.server.server_close()
    handler = collector.server.RequestHandlerClass
    collector.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    collector.server.daemon_threads = True
    collector.endpoint = f"http://127.0.0.1:{port}"
    return collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=4318)
    args = parser.parse_args()
    with running_collector(args.port) as collector:
        print(f"OTLP/HTTP on {collector.endpoint}", flush=True)  # noqa: T201
        while True:
            time.sleep(5)
            print(f"{len(collector.spans)} spans in {collector.requests} exports", flush=True)  # noqa: T201


if __name__ == "__main__":
    main()
