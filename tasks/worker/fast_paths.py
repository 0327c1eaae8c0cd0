"""The worker-side fast paths, and the start-up checks that keep them honest.

Two places lean on Celery's and kombu's internals (see ``tasks.core.compat`` for the register):

- ``kombu.redis_transport``: ``tasks.worker.broker`` subclasses kombu's Redis transport (and its
  Sentinel transport) so a worker survives a Redis restart or a Sentinel failover, and never
  runs a job twice at once after a broker reconnect (it reads Celery's worker state to hold
  running jobs' messages). It is a fix, not a shortcut: ``JOBQL_FAST_PATHS=false`` leaves it
  on (stock kombu 5.7.0 lets the worker die on a Redis restart and on a failover, and runs a
  job twice at once after a reconnect, all measured); only a failed check turns it off, and
  Celery then uses kombu's stock ``redis`` (``sentinel``) transport.
- ``celery.message_writer``: ``tasks.core.messages`` writes Celery's protocol-2 message as kombu's
  Redis transport stores it, so the API pushes it in the same atomic call as the job record.
  Off, the API publishes through Celery's own producer on a thread.

Each check builds what it relies on from the installed libraries, without any I/O, and
raises :class:`ShapeError` where they no longer match.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import json
import weakref
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from billiard.pool import ApplyResult  # type: ignore[import-untyped]
from celery.concurrency.asynpool import AsynPool
from celery.worker import state as worker_state
from celery.worker.request import Request
from kombu.connection import Connection
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis

from tasks.core import compat, redis_clients
from tasks.core.messages import OWNER_HEADER, PRIORITY_SEP, PRIORITY_STEPS, queue_key, task_message
from tasks.core.settings import Settings
from tasks.worker import broker

if TYPE_CHECKING:
    from celery import Celery

VERIFIED = "celery 5.7.0, kombu 5.7.0"

REDIS_TRANSPORT = compat.FastPath(
    name="kombu.redis_transport",
    library="kombu",
    verified=VERIFIED,
    fallback=(
        "kombu's stock Redis transport (a Redis restart may stop a worker, and a broker "
        "reconnect may start a second run of a running job)"
    ),
    fix=True,
)
MESSAGE_WRITER = compat.FastPath(
    name="celery.message_writer",
    library="celery",
    verified=VERIFIED,
    fallback="Celery's producer on a thread, then the job's PENDING announcement",
)

# Values a producer draws afresh for every message: compared by presence only.
RANDOM_FIELDS = frozenset({"headers.origin", "properties.reply_to", "properties.delivery_tag"})


class ShapeError(RuntimeError):
    """An internal a fast path relies on is not what it was verified to be."""


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ShapeError(what)


def broker_transport(settings: Settings) -> str | None:
    """The Celery ``broker_transport``: ours on a Redis broker while its check passes (it is a
    fix, so ``JOBQL_FAST_PATHS`` does not turn it off), else Celery's pick."""
    scheme = urlparse(settings.broker).scheme
    if scheme not in ("redis", "rediss", "sentinel"):
        return None
    on = compat.enable(REDIS_TRANSPORT, check_redis_transport, allowed=settings.fast_paths)
    if not on:
        return None
    if scheme == "sentinel":
        # kombu re-reads the transport from the URL's scheme whenever it moves to the next
        # sentinel of the list (``Connection.switch``), which a failover makes it do: the
        # scheme must name ours too, or the second failover would meet the stock transport.
        TRANSPORT_ALIASES["sentinel"] = broker.SENTINEL_TRANSPORT
        return broker.SENTINEL_TRANSPORT
    return broker.TRANSPORT


def writes_messages(app: Celery, settings: Settings) -> bool:
    """Whether the API writes Celery's messages itself: the broker is the records' Redis."""
    # Any shape of Redis (plain, TLS, Sentinel): the message lands where the worker reads.
    if settings.broker != settings.records or not redis_clients.is_redis(settings.broker):
        return False
    check = functools.partial(check_message_writer, app)
    return compat.enable(MESSAGE_WRITER, check, allowed=settings.fast_paths)


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


def _parameters(method: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(method).parameters)


class _NoRestore:
    """A channel stand-in for a QoS built only to look at: nothing to restore at exit."""

    do_restore = False


def check_redis_transport() -> None:
    """What ``tasks.worker.broker`` overrides, calls and reads still exists with the same shape."""
    _require(
        issubclass(kombu_redis.SentinelChannel, kombu_redis.Channel)
        and issubclass(kombu_redis.SentinelTransport, kombu_redis.Transport),
        "kombu's Sentinel channel and transport extend the Redis ones",
    )
    overridden = {
        "restore_unacked": ["self", "client"],
        "ack": ["self", "delivery_tag"],
        "reject": ["self", "delivery_tag", "requeue"],
    }
    for name, parameters in overridden.items():
        _require(
            _parameters(getattr(kombu_redis.QoS, name)) == parameters,
            f"kombu's redis QoS.{name} takes {parameters[1:]}",
        )
    # tasks.worker.reaper restores a lost worker's messages the way the visibility timeout does.
    _require(
        _parameters(kombu_redis.QoS.restore_by_tag) == ["self", "tag", "client", "leftmost"],
        "kombu's redis QoS.restore_by_tag(tag, client, leftmost)",
    )
    _require(kombu_redis.Channel.unacked_key == "unacked", "kombu's redis Channel.unacked_key")
    for name in ("ack", "reject"):
        _require(
            _parameters(getattr(virtual.QoS, name)) == overridden[name],
            f"kombu's virtual QoS.{name} takes {overridden[name][1:]}",
        )
    _require(kombu_redis.Channel.QoS is kombu_redis.QoS, "kombu's redis Channel.QoS is its QoS")
    _require(
        kombu_redis.Transport.Channel is kombu_redis.Channel,
        "kombu's redis Transport.Channel is its Channel",
    )
    # The envelope guard replaces two of kombu's methods with copies: they must still be
    # the code that was copied (same steps, same helpers), or the copy would drift.
    _require(
        _parameters(kombu_redis.Channel._brpop_read) == ["self", "options"]
        and _parameters(kombu_redis.Channel._get) == ["self", "queue"],
        "kombu's redis Channel._brpop_read(**options) and _get(queue)",
    )
    for method, steps in {
        "_brpop_read": (
            "parse_response(self.client.connection", "self._queue_cycle.rotate(dest)",
            "self.connection._deliver(loads(bytes_to_str(item)), dest)", "self._in_poll = None",
            "self._flush_brpop_reauth()",
        ),
        "_get": (
            "client.rpop(self._q_for_pri(queue, pri))", "return loads(bytes_to_str(item))",
            "self._maybe_update_queues_expire(client, queue)",
        ),
    }.items():  # fmt: skip
        source = inspect.getsource(getattr(kombu_redis.Channel, method))
        missing = [step for step in steps if step not in source]
        _require(not missing, f"kombu's redis Channel.{method} still does {missing}")
    qos = kombu_redis.QoS(_NoRestore())  # type: ignore[no-untyped-call]
    _require(isinstance(getattr(qos, "_delivered", None), dict), "QoS.__init__ sets _delivered")
    check_held_messages()
    with offline_channel({}, broker.Transport) as channel:
        _require(channel.QoS is broker.QoS, "the channel builds our QoS")
        _require(
            hasattr(channel.connection.client, "hostname"),
            "a channel reaches its client through channel.connection.client",
        )
        spare = Connection(**broker.settings_of(channel.connection.client))  # type: ignore[no-untyped-call]
        _require(
            spare.transport_cls is broker.Transport,
            "a connection opened from the channel's settings uses our transport",
        )


def check_held_messages() -> None:
    """What ``tasks.worker.broker`` reads to hold a running job's message across a reconnect."""
    restore_once = inspect.getsource(virtual.QoS.restore_unacked_once)
    _require(
        _parameters(virtual.QoS.restore_unacked_once) == ["self", "stderr"]
        and "self._flush()" in restore_once
        and "self.restore_unacked()" in restore_once
        and "state.restored = True" in restore_once,
        "kombu's QoS.restore_unacked_once flushes, then restores what _delivered holds",
    )
    _require(
        _parameters(kombu_redis.QoS._remove_from_indices) == ["self", "delivery_tag", "pipe"],
        "kombu's redis QoS._remove_from_indices(delivery_tag, pipe)",
    )
    for name in ("active_requests", "reserved_requests"):
        _require(
            isinstance(getattr(worker_state, name, None), weakref.WeakSet),
            f"celery.worker.state.{name} is a WeakSet of requests",
        )
    _require(
        isinstance(getattr(Request, "message", None), property)
        and getattr(Request, "acknowledged", None) is False
        and hasattr(Request, "_apply_result"),
        "Celery's Request has message, acknowledged and _apply_result",
    )
    _require(
        hasattr(ApplyResult, "_write_to")
        and "job._write_to = proc" in inspect.getsource(AsynPool._create_write_handlers),
        "prefork marks a job it begins writing to a child with _write_to",
    )
    _require(
        "job.discard()" in inspect.getsource(AsynPool.flush)
        and "if not job._accepted" in inspect.getsource(AsynPool.flush),
        "Celery's pool flush on reconnect drops only jobs no child accepted",
    )


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
) -> dict[str, Any]:
    """The message as Celery's producer would store it on Redis, from Celery's and kombu's parts.

    ``as_task_v2`` builds the headers and body, the ``owner`` header merged in as
    ``send_task(headers=...)`` does; kombu's channel wraps and encodes them as
    ``Producer.publish`` has it do. The two properties ``publish`` itself adds
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
    headers = {**sent.headers, **({OWNER_HEADER: owner} if owner is not None else {})}
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
        _require(
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
            _require(not found, f"protocol 2 changed for {options}: {'; '.join(found)}")
            key = channel._q_for_pri(request["queue"], channel._get_message_priority(ours))
            _require(
                key == queue_key(request["queue"], request.get("priority")),
                f"kombu queues priority {request.get('priority')} on {key!r}",
            )
