"""RabbitMQ as the broker, made to behave as the Redis transport does: the queues' arguments,
JobQL's priorities, what the server can do. AMQP serves the highest priority first, so a message
carries ``9 - priority``; quorum queues take no ``x-max-priority`` and use topic exchanges, the
only ones Celery's delayed delivery binds to; and every queue carries ``x-consumer-timeout``, the
counterpart of the Redis transport's visibility timeout, which older servers ignore
(:func:`server_warnings` says so).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready
from kombu.entity import Exchange, Queue

from tasks.core.messages import PRIORITY_STEPS
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
HIGHEST = PRIORITY_STEPS[-1]
# The first release that reads x-consumer-timeout from a queue's arguments.
PER_QUEUE_TIMEOUT_SINCE = (3, 11, 15)
SERVER_DEFAULT_TIMEOUT_MS = 30 * 60 * 1000


def is_amqp(url: str) -> bool:
    return url.split(":", 1)[0] in AMQP_SCHEMES


def priority(broker_url: str, value: int | None) -> int | None:
    """The message priority the broker needs for JobQL's ``value`` (0 first)."""
    if not is_amqp(broker_url):
        return value
    return HIGHEST - (value or 0)


def consumer_timeout_ms(settings: Settings) -> int:
    """Same as the Redis transport's visibility timeout: above the task time limit."""
    return settings.redelivery_after * 1000


def queue_arguments(settings: Settings) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-consumer-timeout": consumer_timeout_ms(settings)}
    if settings.rabbitmq_queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    else:
        arguments["x-max-priority"] = HIGHEST
    return arguments


def queue(settings: Settings, name: str) -> Queue:
    """A durable queue of ``name`` behind an exchange of its name, routed by its name."""
    kind = "topic" if settings.rabbitmq_queue_type == "quorum" else "direct"
    return Queue(  # type: ignore[no-untyped-call]
        name,
        Exchange(name, kind),  # type: ignore[no-untyped-call]
        routing_key=name,
        queue_arguments=queue_arguments(settings),
    )


def celery_options(settings: Settings) -> dict[str, Any]:
    """The Celery settings that differ on RabbitMQ."""
    return {
        # basic.publish waits for the broker's ack: a message it could not take (a full
        # queue, a node going down) raises in the producer instead of vanishing.
        "broker_transport_options": {"confirm_publish": True},
        "task_default_priority": HIGHEST,
        "task_default_queue_type": settings.rabbitmq_queue_type,
        "task_create_missing_queue_type": settings.rabbitmq_queue_type,
        "task_default_exchange_type": "topic"
        if settings.rabbitmq_queue_type == "quorum"
        else "direct",
    }


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _version_text(server_properties: dict[str, Any]) -> str:
    raw = server_properties.get("version", b"")
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def version_of(server_properties: dict[str, Any]) -> tuple[int, ...]:
    """The server's version as numbers, from what it said when the connection opened."""
    return _version(_version_text(server_properties))


def server_warnings(settings: Settings, server_properties: dict[str, Any]) -> list[str]:
    """What this RabbitMQ server will not do of what JobQL declares, one sentence each."""
    found: list[str] = []
    text = _version_text(server_properties)
    version = version_of(server_properties)
    wanted = consumer_timeout_ms(settings)
    if version and version < PER_QUEUE_TIMEOUT_SINCE:
        found.append(
            f"RabbitMQ {text} ignores the queues' x-consumer-timeout ({wanted} ms): its "
            f"server-wide consumer_timeout (default {SERVER_DEFAULT_TIMEOUT_MS} ms) applies; a "
            "job running or waiting for its countdown longer is redelivered. Set "
            f"consumer_timeout = {wanted} in rabbitmq.conf, or upgrade to 3.11.15+"
        )
    if settings.rabbitmq_queue_type == "quorum" and version and version < (3, 13):
        found.append(
            f"RabbitMQ {text} serves quorum queues in order: JobQL priorities are ignored "
            "(3.13+ serves priorities 0-4 before 5-9)"
        )
    return found


def server_properties(settings: Settings) -> dict[str, Any]:
    """What the RabbitMQ server says of itself when a connection opens (its version...)."""
    from kombu.connection import Connection

    with Connection(settings.broker, connect_timeout=settings.connect_timeout) as conn:  # type: ignore[no-untyped-call]
        conn.connect()
        return dict(conn.connection.server_properties)


@worker_ready.connect
def _warn_about_server(**_: Any) -> None:
    """Log :func:`server_warnings` once, at a worker's start; silent on another broker."""
    from tasks.core.settings import get_settings

    settings = get_settings()
    if not is_amqp(settings.broker):
        return
    try:
        properties = server_properties(settings)
    except Exception as exc:
        logger.warning("could not read the RabbitMQ server's version: %s", exc)
        return
    for warning in server_warnings(settings, properties):
        logger.warning("%s", warning)
