"""The dead-letter list read back, in process: each entry as the worker writes it (the consumer's
view of a message, the transport's raw envelope), its id, its owner, and the envelope put back."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from tasks.core.dead_letters import (
    RAW_KEPT,
    dead_letter_entry,
    entry_id,
    envelope,
    priority_of,
    read,
    requeued,
)
from tasks.core.messages import task_message
from tasks.worker.poison import _raw

JOB = "5f0c1e0a-0000-4000-8000-000000000001"


def _message(**changes: Any) -> dict[str, Any]:
    raw = task_message(
        task="native.countdown",
        job_id=JOB,
        kwargs={"n": 1},
        queue="side",
        now=datetime.now(UTC),
        priority=3,
        owner="alice",
    )
    return {**json.loads(raw), **changes}


def _set_aside_by_the_consumer(sent: dict[str, Any]) -> str:
    """The entry :func:`tasks.worker.poison.set_aside` writes for ``sent``: kombu hands the
    consumer the message with its body out of base64."""
    seen = SimpleNamespace(
        headers=sent["headers"],
        properties=sent["properties"],
        content_type=sent["content-type"],
        content_encoding=sent["content-encoding"],
        body=base64.b64decode(sent["body"]),
    )
    return dead_letter_entry("side", _raw(seen), "NotRegistered: no such task", id=JOB)


def test_a_message_the_consumer_set_aside_is_read_back_whole() -> None:
    sent = _message()
    entry = read(_set_aside_by_the_consumer(sent))

    assert entry.message is not None and entry.unreadable == ""
    assert entry.message["body"] == sent["body"], "the body is back in base64"
    assert entry.message["headers"] == sent["headers"]
    assert (entry.owner, entry.job_id, entry.task, entry.queue) == (
        "alice", JOB, "native.countdown", "side"
    )  # fmt: skip
    assert priority_of(entry.message) == 3

    again = json.loads(requeued(entry.message, "side"))
    assert envelope(json.dumps(again))[0] is not None, "kombu can deliver it"
    assert again["properties"]["delivery_tag"] != sent["properties"]["delivery_tag"]
    assert again["properties"]["delivery_info"] == {"exchange": "", "routing_key": "side"}
    assert again["body"] == sent["body"] and again["headers"] == sent["headers"]


def test_an_id_is_the_same_for_the_same_entry_and_differs_between_entries() -> None:
    text = _set_aside_by_the_consumer(_message())
    assert read(text).id == read(text).id == entry_id(text)
    assert read(_set_aside_by_the_consumer(_message())).id != read(text).id


def test_what_a_worker_would_set_aside_again_is_shown_but_not_requeueable() -> None:
    cases = {
        "not JSON": dead_letter_entry("side", b"{not json", "not JSON"),
        "not [args, kwargs, embed]": _set_aside_by_the_consumer(
            _message(body=base64.b64encode(b'{"a": 1}').decode())
        ),
        "not JSON, its body": _set_aside_by_the_consumer(
            _message(**{"content-type": "application/x-python-serialize"})
        ),
        "bytes were kept": dead_letter_entry("side", b"x" * (RAW_KEPT + 1), "too big"),
        "name no id": _set_aside_by_the_consumer(
            _message(headers={**_message()["headers"], "id": None})
        ),
    }
    for words, text in cases.items():
        entry = read(text)
        assert entry.message is None, words
        assert words.split(",")[0] in entry.unreadable, (words, entry.unreadable)


def test_an_envelope_without_an_owner_header_and_a_broken_entry_name_no_owner() -> None:
    sent = _message()
    del sent["headers"]["jobql_owner"]
    assert read(_set_aside_by_the_consumer(sent)).owner is None
    broken = read("not an entry at all")
    assert broken.owner is None and broken.message is None and broken.raw == "not an entry at all"
