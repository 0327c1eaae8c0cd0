"""Celery's task message (protocol 2) as kombu's Redis transport stores it, built without kombu,
so the API can write the job record, the message and the PENDING event in one atomic Redis call
on the event loop, with no thread and no lock; stock Celery workers read it exactly as if
``apply_async`` had sent it. :mod:`tasks.core.message_writer` checks at start-up that the
installed Celery and kombu write the same message.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson

from tasks.core.formats import FORMAT_HEADER, RECORD_FORMAT

# The Redis transport's priority queues: 0 is served first, a message with priority p > 0
# waits in "<queue><SEP><p>" (see tasks.core.app's broker_transport_options).
PRIORITY_STEPS = list(range(10))
PRIORITY_SEP = ":"

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_REPLY_TO = str(uuid.uuid4())


# The job's owner, in its Celery message: the worker names the owner's indexes in its
# record updates, and would otherwise have to guess it (tasks.core.events). A hint only: the
# update script checks it against the record, so a wrong or forged one costs a call.
OWNER_HEADER = "jobql_owner"


def job_headers(owner: str | None) -> dict[str, Any]:
    """The headers JobQL adds to a job's Celery message: its format
    (:data:`tasks.core.formats.FORMAT_HEADER`) and, when known, its owner."""
    headers: dict[str, Any] = {FORMAT_HEADER: RECORD_FORMAT}
    if owner is not None:
        headers[OWNER_HEADER] = owner
    return headers


# What Celery's ``argsrepr`` and ``kwargsrepr`` headers say of a job's input. Celery fills
# them with up to 1 KB of the input itself, and from there it reaches Flower, ``celery
# events``, ``celery inspect`` and the worker's error lines; JobQL shows no input anywhere
# (the producers' receiver in tasks.core.app, the worker's request in tasks.worker.requests).
HIDDEN_INPUT = "<job input hidden>"
EMPTY_ARGS, EMPTY_KWARGS = "()", "{}"


def hidden(text: str, empty: str) -> str:
    """A representation of a job's input as it may be shown: ``empty`` (and nothing) as is,
    any input as :data:`HIDDEN_INPUT`."""
    return text if text in ("", empty) else HIDDEN_INPUT


def hide_input(headers: dict[str, Any]) -> None:
    """Celery's message headers (protocol 2), the input representations hidden in place."""
    for name, empty in (("argsrepr", EMPTY_ARGS), ("kwargsrepr", EMPTY_KWARGS)):
        if isinstance(headers.get(name), str):
            headers[name] = hidden(headers[name], empty)


def stamp(headers: dict[str, Any]) -> None:
    """What JobQL does to every message Celery's producer sends from a process that loaded it:
    the input hidden, the format header added where the sender set none."""
    hide_input(headers)
    headers.setdefault(FORMAT_HEADER, RECORD_FORMAT)


def queue_key(queue: str, priority: int | None) -> str:
    return f"{queue}{PRIORITY_SEP}{priority}" if priority else queue


def task_message(
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
) -> str:
    """The JSON a Celery 5 producer would LPUSH for ``apply_async(kwargs=..., ...)``, with
    the job's ``owner`` as the header :data:`OWNER_HEADER`, its format as
    :data:`tasks.core.formats.FORMAT_HEADER`, and the ``trace`` headers
    (``traceparent``, ``tracestate``: :func:`tasks.core.tracing.current_headers`) beside it, as
    ``headers=`` would add them, and where OpenTelemetry's Celery instrumentation puts and reads
    them."""
    if countdown is not None:
        eta = now + timedelta(seconds=countdown)
    body = [[], kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    properties: dict[str, Any] = {
        "correlation_id": job_id,
        "reply_to": _REPLY_TO,
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": priority or 0,
        "body_encoding": "base64",
        "delivery_tag": str(uuid.uuid4()),
    }
    if expires is not None:
        properties["expiration"] = str(max(0, int((expires - now).total_seconds() * 1000)))
    message: dict[str, Any] = {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": job_id,
            "shadow": None,
            "eta": eta.isoformat() if eta else None,
            "expires": expires.isoformat() if expires else None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": job_id,
            "parent_id": None,
            "argsrepr": EMPTY_ARGS,
            "kwargsrepr": HIDDEN_INPUT if kwargs else EMPTY_KWARGS,
            "origin": _ORIGIN,
            "ignore_result": None,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": properties,
    }
    message["headers"].update(job_headers(owner))
    if trace:
        message["headers"].update(trace)
    # The envelope holds strings, small ints, None and empty containers only: orjson
    # writes the JSON json.dumps would, bar non-ASCII kept as UTF-8 instead of \u escapes
    # (in a task, queue or owner name), which any JSON reader, kombu's included, reads the same.
    return orjson.dumps(message).decode()
