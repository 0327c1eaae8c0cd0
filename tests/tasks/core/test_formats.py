"""The format version every record and message carries, and what a reader says of another one."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from celery import Celery
from celery.app.task import Context
from celery.worker.request import Request

from tasks.core import formats
from tasks.core.base import message_format
from tasks.core.message_writer import offline_channel
from tasks.core.messages import FORMAT_HEADER, stamp, task_message
from tasks.core.records import JobSnapshot, JobState, new_record
from tasks.core.workflow_records import WorkflowSnapshot, new_workflow_record

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    formats.forget()
    yield
    formats.forget()


def _job(**changes: str) -> dict[str, str]:
    fields = new_record(
        job_id=str(uuid.uuid4()), task="reports.generate", owner="ada", queue="jobql",
        input_json={"a": 1}, created_at=NOW,
    )  # fmt: skip
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not None}


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == formats.__name__]


def test_new_records_carry_the_format_in_one_byte() -> None:
    job = _job()
    workflow = new_workflow_record(
        workflow_id="w1", name="n", owner="ada", steps=[("j1", 1.0)], created_at=NOW
    )
    assert job[formats.FORMAT_FIELD] == workflow[formats.FORMAT_FIELD] == "2"
    assert len(formats.FORMAT_FIELD) + len(formats.CURRENT) == 2


def test_the_current_format_is_read_without_a_word(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, formats.__name__)
    assert JobSnapshot.from_hash(_job()).state is JobState.PENDING
    assert _said(caplog) == []


def test_format_1_is_read_and_said_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, formats.__name__)
    old = _job()
    del old[formats.FORMAT_FIELD]
    del old["events"]  # 0.9.0's records had no timeline either
    for _ in range(3):
        snapshot = JobSnapshot.from_hash(old)
    workflow = new_workflow_record(
        workflow_id="w1", name="n", owner="ada", steps=[("j1", 1.0)], created_at=NOW
    )
    del workflow[formats.FORMAT_FIELD]
    WorkflowSnapshot.from_hash(workflow)
    WorkflowSnapshot.from_hash(workflow)

    assert snapshot.owner == "ada" and snapshot.events == ""
    said = _said(caplog)
    assert [level for level, _ in said] == [logging.INFO, logging.INFO]
    assert said[0][1].startswith("job records of format 1 (0.9.0 and earlier, before versioning)")
    assert "`jobql migrate` rewrites them" in said[0][1]
    assert said[1][1].startswith("workflow records of format 1")


def test_a_newer_format_is_a_downgrade_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, formats.__name__)
    newer = _job(v="3", shiny_new_field="x")
    snapshots = [JobSnapshot.from_hash(newer) for _ in range(2)]

    assert snapshots[0].id == newer["id"]
    said = _said(caplog)
    assert len(said) == 1 and said[0][0] == logging.WARNING
    assert "job records of format 3, written by a JobQL newer than this one" in said[0][1]
    assert "a downgrade" in said[0][1]


def test_messages_carry_the_format_header() -> None:
    body = json.loads(task_message(task="t", job_id="j", kwargs={}, queue="q", now=NOW))
    assert body["headers"][FORMAT_HEADER] == 2
    # What Celery's producer sends from a JobQL process: stamped unless the sender chose.
    headers: dict[str, Any] = {"argsrepr": "()", "kwargsrepr": "{'a': 1}"}
    stamp(headers)
    assert headers[FORMAT_HEADER] == 2 and headers["kwargsrepr"] != "{'a': 1}"


@pytest.mark.parametrize(("header", "expected"), [(True, 2), (False, 1)])
def test_the_worker_reads_the_format_of_a_message(
    header: bool, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Celery makes the message's own header an attribute of the request the task runs in;
    a message without it (an older API, plain Celery) is format 1, said once."""
    caplog.set_level(logging.INFO, formats.__name__)
    app = Celery("format-header", set_as_current=False)

    @app.task(name="reports.generate", shared=False)  # type: ignore[untyped-decorator]
    def generate(**kwargs: Any) -> None:
        """Never run: only its request is built."""

    message = json.loads(task_message(task="reports.generate", job_id="j", kwargs={},
                                      queue="jobql", now=NOW, owner="ada"))  # fmt: skip
    if not header:
        del message["headers"][FORMAT_HEADER]
    with offline_channel({}) as channel:
        request = Request(channel.Message(message, channel=channel), app=app, task=generate)
        for _ in range(2):
            assert message_format(Context(request.request_dict)) == expected
    said = _said(caplog)
    assert len(said) == (0 if header else 1)
    if not header:
        assert said[0][1].startswith("task messages of format 1")
