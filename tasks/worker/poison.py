"""Poison messages: a task message the worker cannot turn into a run is set aside, never fatal,
because with stock Celery 5.7.0 one body of the wrong shape ended the worker on every redelivery,
stopping the whole queue, and the messages Celery did catch left their jobs PENDING for good
(issue 30). The consumer checks each message before Celery reads it and catches what Celery's
reading still raises: the message is acknowledged and pushed to ``jobql:dead-letter``, and its
job, if still waiting, fails with a readable error.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery import signals
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer as CeleryConsumer

from tasks.core import compat, events
from tasks.core.dead_letters import INVALID, NOT_REGISTERED
from tasks.core.settings import Settings
from tasks.worker.broker import DEAD_LETTER_KEY, DEAD_LETTERS_KEPT, dead_letter_entry

logger = logging.getLogger(__name__)

VERIFIED = "celery 5.7.0"

POISON_MESSAGES = compat.fix(
    "celery.poison_messages",
    "celery",
    VERIFIED,
    "Celery's consumer (a task message of the wrong shape ends the worker; an "
    "unregistered or undecodable one is dropped with its job left PENDING)",
    upstream="Celery 5.7's consumer raises out of its loop on a task message whose body is "
    "not (args, kwargs, embed) and the worker exits (not reported yet)",
)

CONSUMER = f"{__name__}:Consumer"
CELERY_CONSUMER = "celery.worker.consumer:Consumer"


class Unrunnable(Exception):
    """Why a message cannot become a run; ``kind`` is the error type its job fails with."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def check(message: Any, registered: Mapping[str, Any]) -> None:
    """Raise :class:`Unrunnable` unless Celery can build a request from ``message``.

    Protocol 2 (the task in the headers, the body ``[args, kwargs, embed]``) and the older
    bodies Celery still reads (a mapping with the task, or with ``args`` and ``kwargs``).
    The body is decoded once: kombu keeps it for Celery's own read.
    """
    headers = message.headers
    if not isinstance(headers, dict):
        raise Unrunnable(INVALID, "the message has no headers")
    try:
        body = message.decode()
    except Exception as exc:  # kombu's DecodeError, ContentDisallowed (pickle), anything
        raise Unrunnable(
            INVALID, f"the body cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc
    fields: Mapping[str, Any] = headers
    if "task" not in headers:  # protocol 1: everything in the body
        if not isinstance(body, dict) or "task" not in body:
            raise Unrunnable(INVALID, "no task named in the headers or the body")
        fields = body
    task, job_id = fields.get("task"), fields.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise Unrunnable(INVALID, "the job id is not a non-empty string")
    if not isinstance(task, str) or not task:
        raise Unrunnable(INVALID, "the task name is not a non-empty string")
    if task not in registered:
        raise Unrunnable(NOT_REGISTERED, f"task {task[:200]!r} is not registered on this worker")
    if fields is body or (isinstance(body, dict) and "args" in body):  # protocol 1, hybrid
        args, kwargs = body.get("args", ()), body.get("kwargs", {})
    elif isinstance(body, list | tuple) and len(body) == 3:
        args, kwargs, embed = body
        if embed is not None and not isinstance(embed, dict):
            raise Unrunnable(INVALID, "the body's third item (callbacks, chain) is not an object")
    else:
        raise Unrunnable(INVALID, f"the body is not [args, kwargs, embed]: {_shape(body)}")
    if not isinstance(args, list | tuple):
        raise Unrunnable(INVALID, f"args are not a list: {_shape(args)}")
    if not isinstance(kwargs, dict):
        raise Unrunnable(INVALID, f"kwargs are not an object: {_shape(kwargs)}")
    limits = fields.get("timelimit")
    if limits and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(v is None or isinstance(v, int | float) for v in limits)
    ):
        raise Unrunnable(INVALID, f"timelimit is not [hard, soft]: {_shape(limits)}")


def _shape(value: Any) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _known(message: Any) -> dict[str, str]:
    """The job id and task the message names, where they are strings."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    return {k: v for k in ("id", "task") if isinstance(v := headers.get(k), str) and v}


def _raw(message: Any) -> bytes:
    """The message as kombu handed it over, for the dead-letter list."""
    body = message.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return json.dumps(
        {
            "headers": message.headers,
            "properties": message.properties,
            "content-type": message.content_type,
            "content-encoding": message.content_encoding,
            "body": body,
        },
        default=repr,
    ).encode()


def set_aside(
    message: Any, kind: str, reason: str, connection_errors: tuple[type[BaseException], ...] = ()
) -> None:
    """Dead-letter the message, fail its waiting job, then acknowledge it.

    Redis unreachable: logged and acknowledged all the same. On a Redis broker the ack
    fails too and the message comes back after the visibility timeout; on RabbitMQ only
    this log line keeps it.
    """
    known = _known(message)
    delivery = message.delivery_info or {}
    queue = str(delivery.get("routing_key") or delivery.get("exchange") or "")
    raw = _raw(message)
    logger.error(
        "set aside a task message of %d bytes from queue %s on %s (%s: %s)",
        len(raw),
        queue,
        DEAD_LETTER_KEY,
        kind,
        reason,
    )
    try:
        client = events.client()
        entry = dead_letter_entry(queue, raw, f"{kind}: {reason}", **known)
        with client.pipeline(transaction=False) as pipe:
            pipe.lpush(DEAD_LETTER_KEY, entry)
            pipe.ltrim(DEAD_LETTER_KEY, 0, DEAD_LETTERS_KEPT - 1)
            pipe.execute()
        if "id" in known:
            outcome = events.refused(known["id"], kind, reason)
            if outcome not in ("ok", "missing"):
                logger.info("job %s left %s: its message was set aside", known["id"], outcome)
    except redis.RedisError as exc:
        logger.error("the set-aside message could not be recorded: %s; raw: %.2000r", exc, raw)
    if not message.acknowledged:
        message.ack_log_error(logger, connection_errors)
    signals.task_rejected.send(sender=None, message=message, exc=Unrunnable(kind, reason))


def _forget(message: Any) -> None:
    """Drop a request Celery reserved for ``message`` before failing on it."""
    for request in tuple(worker_state.reserved_requests):
        if getattr(request, "message", None) is message:
            worker_state.task_ready(request)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer, with every unrunnable task message set aside (module docstring)."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        on_task_received = super().create_task_handler(*args, **kwargs)
        registered = self.app.tasks
        connection_errors = tuple(self.connection_errors)

        def guarded(message: Any) -> Any:
            try:
                check(message, registered)
            except Unrunnable as exc:
                return set_aside(message, exc.kind, exc.reason, connection_errors)
            try:
                return on_task_received(message)
            except connection_errors:
                raise  # Celery's consumer reconnects
            except Exception as exc:
                logger.exception("Celery could not turn a task message into a run")
                _forget(message)
                reason = f"{type(exc).__name__}: {exc}"
                return set_aside(message, INVALID, reason, connection_errors)

        return guarded

    # Celery's own handlers of the messages it catches: set aside instead of dropped.

    def on_unknown_message(self, body: Any, message: Any) -> None:
        why = "no task named in the headers or the body"
        set_aside(message, INVALID, why, tuple(self.connection_errors))

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        why = f"task not registered on this worker: {exc}"
        set_aside(message, NOT_REGISTERED, why, tuple(self.connection_errors))

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        set_aside(message, INVALID, str(exc), tuple(self.connection_errors))

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        why = f"the body cannot be decoded: {type(exc).__name__}: {exc}"
        set_aside(message, INVALID, why, tuple(self.connection_errors))


HANDLERS = {
    "create_task_handler": ["self", "promise"],
    "on_unknown_message": ["self", "body", "message"],
    "on_unknown_task": ["self", "body", "message", "exc"],
    "on_invalid_task": ["self", "body", "message", "exc"],
    "on_decode_error": ["self", "message", "exc"],
}


def check_consumer() -> None:
    """Celery's consumer still has the handlers overridden here, with the same parameters."""
    for name, parameters in HANDLERS.items():
        found = list(inspect.signature(getattr(CeleryConsumer, name)).parameters)
        if found != parameters:
            raise RuntimeError(f"Consumer.{name}{tuple(found)}, not {tuple(parameters)}")


def consumer_class(settings: Settings) -> str:
    """The worker's ``worker_consumer``: ours while its check passes, else Celery's."""
    on = compat.decide(POISON_MESSAGES, check_consumer, settings)
    return CONSUMER if on else CELERY_CONSUMER
