"""Webhook deliveries as a Celery task on its own queue, so the POST always happens on a worker,
never on the API's event loop. The record writer (:mod:`tasks.core.events`) schedules one when a
job or workflow reaches a state its webhook asked for, and the API for the changes it makes (a
cancel); each attempt is logged on the job or workflow (``webhookDeliveries``), and a non-2xx
answer or a timeout is retried with exponential backoff for ``JOBQL_WEBHOOK_RETRY_FOR`` seconds,
as the Standard Webhooks specification describes.
"""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from celery import Task

from tasks.core import events, records
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
        "steps": shown,
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


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect could lead anywhere, the internal network too: it counts as an answer."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxy from the environment, no redirects: the POST goes where the URL was checked.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def _refusal(url: str) -> str | None:
    """Why ``url`` may not be called now (its host resolved again), or None."""
    try:
        host = check_scheme(url)
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except (ValueError, OSError) as exc:
        return str(exc)
    refused = refused_address(addresses, get_settings().webhook_allowed_networks)
    return f"{host} resolves to {refused}, a private address" if refused else None


def post(url: str, message_id: str, body: bytes) -> int:
    """One signed POST; returns the HTTP status (raises OSError on a network failure)."""
    settings = get_settings()
    if not settings.webhook_secret:
        raise RuntimeError("no JOBQL_WEBHOOK_SECRET: webhooks cannot be signed")
    timestamp = int(time.time())
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked: http(s) only
        url,
        data=body,
        method="POST",
        headers={
            "content-type": "application/json",
            "user-agent": "JobQL-Webhooks/1",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(settings.webhook_secret, message_id, timestamp, body),
        },
    )
    try:
        with _opener.open(request, timeout=settings.webhook_timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


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
    refusal = _refusal(url)
    if refusal is not None:
        entry["error"] = f"refused: {refusal}"
        _log(kind, record["id"], entry)
        return None
    try:
        status = post(url, message_id, payload)
        entry["status"] = status
        if not 200 <= status < 300:
            entry["error"] = f"answered HTTP {status}"
    except (OSError, RuntimeError) as exc:
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
