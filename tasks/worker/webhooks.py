"""Webhook deliveries as a Celery task on its own queue, so the POST always happens on a worker,
never on the API's event loop. The record writer (:mod:`tasks.core.events`) schedules one when a
job or workflow reaches a state its webhook asked for, and the API for the changes it makes (a
cancel); each attempt is logged on the job or workflow (``webhookDeliveries``), and a non-2xx
answer or a timeout is retried with exponential backoff for ``JOBQL_WEBHOOK_RETRY_FOR`` seconds,
as the Standard Webhooks specification describes.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from celery import Task

from tasks.core import events, records, tracing
from tasks.core.app import celery_app
from tasks.core.records import JobSnapshot
from tasks.core.scripts import Hooks
from tasks.core.settings import get_settings
from tasks.core.webhooks import (
    DELIVERY_TASK,
    check_scheme,
    deliveries_key,
    delivery_kwargs,
    refused_address,
    signature,
)
from tasks.core.workflow_records import WorkflowSnapshot, public_fields

logger = logging.getLogger(__name__)


def schedule(hooks: Hooks) -> None:
    """Send one delivery task per event (worker side: Celery's producer is ours to block)."""
    queue = get_settings().webhook_queue
    for kind, record in (("job", hooks.job), ("workflow", hooks.workflow)):
        if record:
            celery_app.send_task(DELIVERY_TASK, kwargs=delivery_kwargs(kind, record), queue=queue)


events.hook_sink = schedule


def _moment(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_json(job: JobSnapshot) -> dict[str, Any]:
    """A job as the API's ``Job`` type shows it."""
    return {
        "id": job.id,
        "task": job.task,
        "state": job.state.value,
        "done": job.done,
        "sequence": job.sequence,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "input": job.input,
        "retries": job.retries,
        "queue": job.queue,
        "createdAt": _moment(job.created_at),
        "startedAt": _moment(job.started_at),
        "finishedAt": _moment(job.finished_at),
        "workflowId": job.workflow_id,
    }


def workflow_json(workflow: WorkflowSnapshot, steps: list[JobSnapshot]) -> dict[str, Any]:
    """A workflow as the API's ``Workflow`` type shows it."""
    shown = [job_json(step) for step in steps]
    return {
        "id": workflow.id,
        "name": workflow.name,
        "state": workflow.state.value,
        "done": workflow.done,
        "sequence": workflow.sequence,
        "progress": workflow.progress,
        "failedStep": next((s for s in shown if s["id"] == workflow.failed_step), None),
        "onFailure": workflow.on_failure.value,
        "steps": shown,
        "shape": workflow.shape,
        "createdAt": _moment(workflow.created_at),
        "finishedAt": _moment(workflow.finished_at),
    }


def _body(kind: str, record: dict[str, Any]) -> bytes:
    if kind == "job":
        shown = job_json(JobSnapshot.from_hash(record))
    else:
        workflow = WorkflowSnapshot.from_hash(public_fields(record))
        client, _, _ = events._scripts()
        with client.pipeline(transaction=True) as pipe:
            for step in workflow.steps:
                pipe.hgetall(records.job_key(step))
            rows = pipe.execute()
        shown = workflow_json(workflow, [JobSnapshot.from_hash(row) for row in rows if row])
    return records.dumps(shown).encode()


def _log(kind: str, record_id: str, entry: dict[str, Any]) -> None:
    client, _, _ = events._scripts()
    key = deliveries_key(kind, record_id)
    with client.pipeline(transaction=True) as pipe:
        pipe.rpush(key, records.dumps(entry))
        pipe.expire(key, get_settings().job_retention_seconds)
        pipe.execute()


# One address as getaddrinfo gives it: its family, and the socket address to connect to.
Address = tuple[socket.AddressFamily, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Destination:
    """A webhook URL resolved once: the guard checked exactly ``addresses``, and the POST
    connects to one of them, never to a second answer for the name (which a rebinding DNS
    server could point at the internal network). The name stays the request's: its ``Host``
    header and, for https, the TLS server name (SNI) and the name the certificate must match."""

    https: bool
    host: str
    port: int
    target: str  # the request line's: path and query
    addresses: tuple[Address, ...]

    def connect(self, timeout: float | None) -> socket.socket:
        """A TCP connection to the first checked address that takes one, in the resolver's
        order (as ``socket.create_connection`` tries them, minus its own lookup)."""
        error = OSError(f"{self.host} has no address")
        for family, address in self.addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.settimeout(timeout)
                sock.connect(address)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            return sock
        raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """http.client's connection with the TCP connection made to the pinned address."""

    def __init__(self, destination: Destination, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout)
        self.destination = destination

    def connect(self) -> None:
        self.sock = self.destination.connect(self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """The same over TLS: the socket goes to the pinned address, the handshake names the host
    (SNI) and checks the certificate against it, as urllib3's ``server_hostname`` does."""

    def __init__(self, destination: Destination, timeout: float, tls: ssl.SSLContext) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout, context=tls)
        self.destination, self.tls = destination, tls

    def connect(self) -> None:
        sock = self.destination.connect(self.timeout)
        try:
            self.sock = self.tls.wrap_socket(sock, server_hostname=self.destination.host)
        except BaseException:
            sock.close()
            raise


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """Certificates checked against the system's CAs (or ``cafile``'s), host names too."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(["http/1.1"])
    return context


_tls: ssl.SSLContext | None = None  # made at the first https delivery (some 20 ms of CPU)


def pin(url: str) -> Destination | str:
    """Where ``url``'s POST goes: its host resolved now, once, and checked; or why it may not
    be called (a name may resolve elsewhere by the next attempt: each attempt pins anew)."""
    try:
        host = check_scheme(url)
        parts = urlsplit(url)
        https = parts.scheme == "https"
        port = parts.port if parts.port is not None else 443 if https else 80
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (ValueError, OSError) as exc:
        return str(exc)
    addresses = tuple((info[0], tuple(info[4])) for info in infos)
    refused = refused_address(
        {str(address[0]) for _, address in addresses}, get_settings().webhook_allowed_networks
    )
    if refused:
        return f"{host} resolves to {refused}, a private address"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Destination(https, host, port, target, addresses)


def post(destination: Destination, message_id: str, body: bytes) -> int:
    """One signed POST; returns the HTTP status (raises OSError on a network failure,
    http.client.HTTPException on an answer that is not HTTP). No proxy and no redirect:
    http.client takes neither from the environment nor follows one, so a 3xx is an answer
    like any other and the POST goes only where ``pin`` checked."""
    global _tls
    settings = get_settings()
    if not settings.webhook_secret:
        raise RuntimeError("no JOBQL_WEBHOOK_SECRET: webhooks cannot be signed")
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "JobQL-Webhooks/1",
        "connection": "close",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(settings.webhook_secret, message_id, timestamp, body),
    }
    connection: http.client.HTTPConnection
    if destination.https:
        _tls = _tls or tls_context()
        connection = _PinnedHTTPS(destination, settings.webhook_timeout, _tls)
    else:
        connection = _PinnedHTTP(destination, settings.webhook_timeout)
    # With tracing on, the POST's client span (http.client has no instrumentation of its
    # own), and its trace in the request's headers, as an instrumented HTTP client sends it.
    attributes = {
        "http.request.method": "POST",
        "server.address": destination.host,
        "server.port": destination.port,
        "url.scheme": "https" if destination.https else "http",
    }
    with tracing.span("POST", "client", attributes) as span:
        headers |= tracing.current_headers() or {}
        try:
            connection.request("POST", destination.target, body=body, headers=headers)
            status = int(connection.getresponse().status)
        finally:
            connection.close()
        if span is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 400:
                tracing.failed(span, str(status))
        return status


class WebhookTask(Task):  # type: ignore[misc]
    """Deliveries are not jobs: tasks.worker.signals records no job for them (``jobql_record``);
    each attempt is logged on the job or workflow it delivers."""

    jobql_record = False


@celery_app.task(  # type: ignore[untyped-decorator]
    name=DELIVERY_TASK, bind=True, base=WebhookTask, max_retries=None, acks_late=True
)
def deliver_webhook(
    self: Task,
    kind: str,
    record: dict[str, Any],
    message_id: str,
    first_at: float,
    body: str | None = None,
) -> int | None:
    """POST one event to its webhook, retrying on a non-2xx answer or a network failure."""
    settings = get_settings()
    attempt = (self.request.retries or 0) + 1
    url = str(record.get("webhook_url") or "")
    payload = body.encode() if body is not None else _body(kind, record)
    entry: dict[str, Any] = {
        "attempt": attempt,
        "status": None,
        "at": records.now().isoformat(),
        "error": None,
        "event": record.get("state"),
        "id": message_id,
    }
    destination = pin(url)
    if isinstance(destination, str):
        entry["error"] = f"refused: {destination}"
        _log(kind, record["id"], entry)
        return None
    try:
        status = post(destination, message_id, payload)
        entry["status"] = status
        if not 200 <= status < 300:
            entry["error"] = f"answered HTTP {status}"
    except (OSError, http.client.HTTPException, RuntimeError) as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
    _log(kind, record["id"], entry)
    if entry["error"] is None:
        return int(entry["status"])
    wait = settings.webhook_backoff * 2 ** (attempt - 1)
    if time.time() + wait - first_at > settings.webhook_retry_for:
        logger.warning("webhook %s for %s %s given up after %d attempts", message_id, kind,
                       record["id"], attempt)  # fmt: skip
        return None
    raise self.retry(
        countdown=wait,
        kwargs={
            "kind": kind,
            "record": record,
            "message_id": message_id,
            "first_at": first_at,
            "body": payload.decode(),
        },
    )
