"""Webhooks on the API side: the URL check at enqueue time, and scheduling a delivery as a task
message for the worker (:mod:`tasks.worker.webhooks`), sent through Celery's producer on its
thread pool, because the API never POSTs from its event loop.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass

import redis.asyncio as aioredis

from gql.services.errors import BadUserInput
from gql.services.producer import Delivery, Producer
from tasks.core.scripts import Hooks
from tasks.core.settings import WebhookSettings
from tasks.core.webhooks import (
    ANY_CHANGE,
    DELIVERY_TASK,
    check_scheme,
    deliveries_key,
    delivery_kwargs,
    refused_address,
)

TERMINAL_EVENTS = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where to POST and on which events: terminal state names, or ``ANY`` for every change."""

    url: str
    events: tuple[str, ...] = TERMINAL_EVENTS

    def as_fields(self) -> tuple[str, str]:
        """``(url, events)`` as a record stores them."""
        events = ANY_CHANGE if ANY_CHANGE in self.events else ",".join(sorted(set(self.events)))
        return self.url, events


async def check(webhook: Webhook, settings: WebhookSettings, path: str) -> None:
    """Refuse a URL that is not http(s), does not resolve, or reaches a private network."""
    if not settings.webhook_secret:
        raise BadUserInput.field(path, "webhooks are not configured on this server")
    if not webhook.events:
        raise BadUserInput.field(f"{path}.events", "name at least one event")
    try:
        host = check_scheme(webhook.url)
    except ValueError as exc:
        raise BadUserInput.field(f"{path}.url", str(exc)) from None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise BadUserInput.field(f"{path}.url", f"{host} does not resolve") from None
    refused = refused_address(
        {str(info[4][0]) for info in infos}, settings.webhook_allowed_networks
    )
    if refused is not None:
        raise BadUserInput.field(
            f"{path}.url",
            f"{host} resolves to {refused}: private, loopback and link-local addresses are refused",
        )


async def schedule(producer: Producer, settings: WebhookSettings, hooks: Hooks | None) -> None:
    """Send the delivery tasks of an API-side change (a cancel) to the workers."""
    if hooks is None:
        return
    for kind, record in (("job", hooks.job), ("workflow", hooks.workflow)):
        if record:
            kwargs = delivery_kwargs(kind, record)
            await producer.publish(
                DELIVERY_TASK, kwargs["message_id"], kwargs, Delivery(settings.webhook_queue)
            )


async def deliveries(client: aioredis.Redis, kind: str, record_id: str) -> list[dict[str, object]]:
    """Every attempt logged for a job or workflow, oldest first."""
    rows = await client.lrange(deliveries_key(kind, record_id), 0, -1)
    return [json.loads(row) for row in rows]
