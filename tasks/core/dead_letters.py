"""The dead-letter list: task messages a worker could not read, set aside on ``jobql:dead-letter``
(newest first, the last ``DEAD_LETTERS_KEPT``) by the worker's transport (an envelope kombu cannot
deliver: :mod:`tasks.worker.broker`) and its consumer (a message Celery cannot turn into a run:
:mod:`tasks.worker.poison`). Its format lives here, below both the worker that writes it and the
API that shows, requeues and discards entries (:mod:`gql.services.dead_letters`).

An entry is JSON: ``queue``, ``reason``, ``size`` (bytes of the message), ``at`` (epoch seconds),
``raw`` (the message's first 64 KiB) and, when they could be read, the job's ``id`` and ``task``.
``raw`` is the envelope as the queue held it (the transport's entries), or the consumer's view of
it: ``headers``, ``properties``, ``content-type``, ``content-encoding`` and the ``body`` already
taken out of its base64 (the consumer's entries), from which :func:`original` rebuilds it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tasks.core.messages import OWNER_HEADER
from tasks.core.records import PREFIX

# Envelopes the worker could not read, newest first, as JSON: queue, reason, size, raw text.
DEAD_LETTER_KEY = f"{PREFIX}:dead-letter"
DEAD_LETTERS_KEPT = 1000
RAW_KEPT = 64 * 1024  # bytes of each raw envelope kept for inspection
# The error types a job fails with when its message is set aside (tasks.worker.poison).
NOT_REGISTERED = "NotRegistered"
INVALID = "InvalidMessage"


def envelope(raw: bytes | str) -> tuple[dict[str, Any] | None, str]:
    """The decoded envelope, or None and why kombu could not deliver it."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(message, dict):
        return None, "not a JSON object"
    properties = message.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return None, "no properties with a delivery_tag"
    delivery = properties.get("delivery_info")
    if not isinstance(delivery, dict) or not all(
        isinstance(delivery.get(k), str) for k in ("exchange", "routing_key")
    ):
        return None, "no delivery_info with exchange and routing_key"
    headers = message.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return None, "headers are not an object"
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        return None, "body is not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return None, "body is not base64"
    return message, ""


def dead_letter_entry(queue: str, raw: bytes, reason: str, **known: str) -> str:
    """One entry of the dead-letter list (``known``: the job id or task, when read)."""
    return json.dumps(
        {
            "queue": queue,
            "reason": reason,
            "size": len(raw),
            "at": time.time(),
            "raw": raw[:RAW_KEPT].decode("utf-8", "replace"),
            **known,
        }
    )


def entry_id(text: str | bytes) -> str:
    """An entry's id: a digest of its text, the same on every read for as long as it is kept."""
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry, read: what the API shows and acts on. ``message`` is the envelope to put
    back on ``queue`` when the entry can be requeued, else None and ``unreadable`` says why."""

    id: str
    text: str  # the entry as stored: what LREM removes
    queue: str
    reason: str
    size: int
    at: float
    raw: str
    job_id: str | None
    task: str | None
    owner: str | None
    message: dict[str, Any] | None
    unreadable: str


def read(text: str) -> DeadLetter:
    """An entry of the list, whatever it holds (a malformed entry is shown, never requeued)."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        data = {"raw": text, "reason": "an entry that is not a JSON object"}
    message, unreadable = original(data)
    headers = message.get("headers") if message else _headers(data.get("raw"))
    headers = headers if isinstance(headers, dict) else {}
    owner = headers.get(OWNER_HEADER)
    at, size = data.get("at"), data.get("size")
    return DeadLetter(
        id=entry_id(text),
        text=text,
        queue=_text(data.get("queue")) or "",
        reason=_text(data.get("reason")) or "",
        size=size if isinstance(size, int) else 0,
        at=float(at) if isinstance(at, int | float) else 0.0,
        raw=_text(data.get("raw")) or "",
        job_id=_text(data.get("id")) or _text(headers.get("id")),
        task=_text(data.get("task")) or _text(headers.get("task")),
        owner=owner if isinstance(owner, str) and owner else None,
        message=message,
        unreadable=unreadable,
    )


def original(entry: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The envelope to put back on the entry's queue, or None and why it cannot be: cut short
    when it was kept, not an envelope, no job id or task, or a body that is not
    ``[args, kwargs, embed]`` in JSON (a worker would set it aside again)."""
    raw = entry.get("raw")
    if not isinstance(raw, str) or not raw:
        return None, "the entry holds no message"
    size = entry.get("size")
    if isinstance(size, int) and size > RAW_KEPT:
        return None, f"only the first {RAW_KEPT} of its {size} bytes were kept"
    message, why = envelope(raw)
    if message is None:
        message, why = _rebuilt(raw, why)
    if message is None:
        return None, f"it is not a message a worker can read: {why}"
    if not (why := _runnable(message)):
        return message, ""
    return None, why


def _rebuilt(raw: str, why: str) -> tuple[dict[str, Any] | None, str]:
    """The envelope from the consumer's view of it (its body no longer in base64)."""
    try:
        seen = json.loads(raw)
    except ValueError:
        return None, why
    if not isinstance(seen, dict) or not {"headers", "properties", "body"} <= set(seen):
        return None, why
    properties, body = seen["properties"], seen["body"]
    base64_body = isinstance(properties, dict) and properties.get("body_encoding") == "base64"
    if base64_body and isinstance(body, str):
        body = base64.b64encode(body.encode()).decode()
    rebuilt = {
        "body": body,
        "content-encoding": seen.get("content-encoding"),
        "content-type": seen.get("content-type"),
        "headers": seen["headers"],
        "properties": properties,
    }
    return envelope(json.dumps(rebuilt))


def _runnable(message: dict[str, Any]) -> str:
    """Why a worker would set ``message`` aside again ('' when it would not): the checks of
    :func:`tasks.worker.poison.check` that need no registry (JSON messages, protocol 2)."""
    headers = message.get("headers") or {}
    for name in ("id", "task"):
        if not isinstance(headers.get(name), str) or not headers[name]:
            return f"its headers name no {name}"
    if message.get("content-type") != "application/json":
        return f"its body is {message.get('content-type')}, not JSON"
    if headers.get("compression"):
        return "its body is compressed"
    body = message.get("body") or ""
    try:
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        decoded = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "its body is not JSON"
    if not (isinstance(decoded, list) and len(decoded) == 3):
        return "its body is not [args, kwargs, embed]"
    args, kwargs, embed = decoded
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return "its args are not a list or its kwargs not an object"
    if embed is not None and not isinstance(embed, dict):
        return "its body's third item is not an object"
    return ""


def requeued(message: dict[str, Any], queue: str) -> str:
    """The envelope to push back on ``queue``: a fresh delivery tag, delivered anew."""
    properties = dict(message["properties"])
    delivery = properties.get("delivery_info") or {}
    properties["delivery_info"] = {"exchange": delivery.get("exchange", ""), "routing_key": queue}
    properties["delivery_tag"] = str(uuid.uuid4())
    properties.pop("redelivered", None)
    return json.dumps({**message, "properties": properties})


def priority_of(message: dict[str, Any]) -> int | None:
    value = message["properties"].get("priority")
    return value if isinstance(value, int) and value > 0 else None


def _headers(raw: Any) -> Any:
    try:
        return json.loads(raw).get("headers") if isinstance(raw, str) else None
    except (ValueError, AttributeError):
        return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
