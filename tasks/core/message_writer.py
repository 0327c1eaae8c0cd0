"""The enqueue design's one lean on Celery's internals: the API (and beat) write Celery's
messages themselves (:mod:`tasks.core.messages`), so a job's record and message go in one atomic
call. This module decides whether they may: the broker must be the records' Redis, and
:func:`check_message_writer` must find, without any I/O, that the installed Celery and kombu
write the same message; otherwise Celery's own producer publishes, on a thread.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kombu.connection import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from tasks.core import compat, redis_clients
from tasks.core.messages import (
    PRIORITY_SEP,
    PRIORITY_STEPS,
    job_headers,
    queue_key,
    stamp,
    task_message,
)
from tasks.core.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

VERIFIED = "celery 5.7.0, kombu 5.7.0"


MESSAGE_WRITER = compat.design(
    "celery.message_writer",
    "celery, kombu",
    VERIFIED,
    "Celery's producer on a thread, then the job's PENDING announcement",
    why="the enqueue design: a job's record and its Celery message in one atomic Redis call, "
    "so no job is recorded but never sent, or sent but never recorded",
)


# Values a producer draws afresh for every message: compared by presence only.
RANDOM_FIELDS = frozenset({"headers.origin", "properties.reply_to", "properties.delivery_tag"})


class ShapeError(RuntimeError):
    """An internal a fast path relies on is not what it was verified to be."""


def require(condition: bool, what: str) -> None:
    if not condition:
        raise ShapeError(what)


def writes_messages(app: Celery, settings: Settings) -> bool:
    """Whether the API writes Celery's messages itself: the broker is the records' Redis."""
    # Any shape of Redis (plain, TLS, Sentinel): the message lands where the worker reads.
    if settings.broker != settings.records or not redis_clients.is_redis(settings.broker):
        return False
    check = functools.partial(check_message_writer, app)
    return compat.decide(MESSAGE_WRITER, check, settings)


@contextlib.contextmanager
def offline_channel(
    options: dict[str, Any], transport: type[kombu_redis.Transport] = kombu_redis.Transport
) -> Iterator[Any]:
    """A Redis channel set up from ``options`` without connecting (kombu's own pings the server).

    Only its pure parts are used: message shaping, priority queue naming, its connection.
    """
    connection = Connection("redis://", transport=transport, transport_options=options)  # type: ignore[no-untyped-call]
    try:
        channel = transport.Channel.__new__(transport.Channel)
        virtual.Channel.__init__(channel, connection.transport)  # type: ignore[no-untyped-call]
        yield channel
    finally:
        # The transport opened a poller; close it now rather than at a garbage collection.
        connection.transport.cycle.poller.close()


SAMPLE_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def sample_options(now: datetime) -> list[dict[str, Any]]:
    """A spread of ``apply_async`` options the API passes on, for checks and tests."""
    later = now + timedelta(minutes=5)
    return [
        {},
        {"countdown": 30.0},
        {"eta": later},
        {"expires": later + timedelta(hours=1)},
        {"priority": 0},
        {"priority": 7},
        {"queue": "reports", "priority": 9, "eta": later, "expires": later + timedelta(hours=1)},
        # A traced enqueue (tasks.core.tracing): W3C trace context beside the owner.
        {"trace": {"traceparent": SAMPLE_TRACEPARENT, "tracestate": "jobql=1"}},
    ]


def stock_message(
    app: Celery,
    channel: Any,
    *,
    task: str,
    job_id: str,
    kwargs: dict[str, Any],
    queue: str,
    now: datetime,
    countdown: float | None = None,
    eta: datetime | None = None,
    expires: datetime | None = None,
    priority: int | None = None,
    owner: str | None = None,
    trace: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The message as Celery's producer would store it on Redis, from Celery's and kombu's parts.

    ``as_task_v2`` builds the headers and body, the ``owner`` and ``trace`` headers merged in
    as ``send_task(headers=...)`` does and the input representations hidden as JobQL's
    ``before_task_publish`` receiver does (``tasks.core.app``); kombu's channel wraps and
    encodes them as ``Producer.publish`` has it do. The two properties ``publish`` itself adds
    (``delivery_mode``, ``expiration``) are set here the way kombu 5.7.0 sets them.
    """
    sent = app.amqp.as_task_v2(
        job_id,
        task,
        kwargs=kwargs,
        countdown=countdown,
        eta=eta,
        expires=expires,
        now=now,
        ignore_result=None,  # what ``send_task`` passes when not told
    )
    given = {**job_headers(owner), **(trace or {})}
    headers = {**sent.headers, **given}
    stamp(headers)
    properties: dict[str, Any] = {**sent.properties, "delivery_mode": 2}
    if expires is not None:
        properties["expiration"] = str(int((expires - now).total_seconds() * 1000))
    body = json.dumps(sent.body)
    message: dict[str, Any] = channel.prepare_message(
        body, priority, "application/json", "utf-8", headers, properties
    )
    channel._inplace_augment_message(message, "", queue)
    return message


def differences(
    stock: dict[str, Any], ours: dict[str, Any], ignore: frozenset[str] = frozenset()
) -> list[str]:
    """Field by field, where our message differs from the stock one (body decoded).

    Fields in ``RANDOM_FIELDS`` and ``ignore`` are compared by presence only.
    """

    def fields(message: dict[str, Any]) -> dict[str, Any]:
        flat = {k: v for k, v in message.items() if k not in ("headers", "properties", "body")}
        flat |= {f"headers.{k}": v for k, v in message.get("headers", {}).items()}
        for key, value in message.get("properties", {}).items():
            if key == "delivery_info":
                flat |= {f"properties.delivery_info.{k}": v for k, v in value.items()}
            else:
                flat[f"properties.{key}"] = value
        flat["body"] = json.loads(base64.b64decode(message["body"]))
        return flat

    theirs, mine = fields(stock), fields(ours)
    found = []
    for key in sorted(theirs.keys() | mine.keys()):
        if key not in theirs or key not in mine:
            found.append(f"{key}: only in {'ours' if key in mine else 'stock'}")
        elif key not in RANDOM_FIELDS | ignore and theirs[key] != mine[key]:
            found.append(f"{key}: stock {theirs[key]!r}, ours {mine[key]!r}")
    return found


def check_message_writer(app: Celery) -> None:
    """``tasks.core.messages`` still writes what Celery's producer would, where kombu puts it."""
    transport_options = app.conf.broker_transport_options
    with offline_channel(transport_options) as channel:
        require(
            channel.sep == PRIORITY_SEP and list(channel.priority_steps) == PRIORITY_STEPS,
            "kombu's redis channel takes sep and priority_steps from the transport options",
        )
        now = datetime.fromisoformat("2025-01-01T00:00:00+00:00")
        for options in sample_options(now):
            request: dict[str, Any] = {
                "task": "jobql.sample",
                "job_id": "00000000-0000-4000-8000-000000000000",
                "kwargs": {"n": 1, "text": "é"},
                "queue": "jobql",
                "now": now,
                "owner": "ada",
                **options,
            }
            ours = json.loads(task_message(**request))
            found = differences(stock_message(app, channel, **request), ours)
            require(not found, f"protocol 2 changed for {options}: {'; '.join(found)}")
            key = channel._q_for_pri(request["queue"], channel._get_message_priority(ours))
            require(
                key == queue_key(request["queue"], request.get("priority")),
                f"kombu queues priority {request.get('priority')} on {key!r}",
            )
