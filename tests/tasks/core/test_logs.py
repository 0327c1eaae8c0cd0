"""A JSON log line is one JSON object a log shipper reads back exactly: the message and the
job fields as given, the time in ISO-8601 UTC with milliseconds, a traceback kept whole."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from tasks.core.logs import JsonFormatter


def _record(created: float, message: str, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("gql.ops.operations", logging.INFO, __file__, 1, message, (), None)
    record.created = created
    for key, value in fields.items():
        setattr(record, key, value)
    return record


def test_a_json_line_reads_back_as_what_was_logged() -> None:
    formatter = JsonFormatter()
    message = 'graphql mutation "generateReport"\nsecond line, ünïcode, \\ and \t'
    record = _record(1_790_000_000.1895, message, job_id="j-1", duration_ms=1.25,
                     request_id="r-1", worker=None, state=7)  # fmt: skip
    line = formatter.format(record)
    assert "\n" not in line and line.isascii()
    assert json.loads(line) == {
        "time": "2026-09-21T14:13:20.189+00:00",
        "level": "INFO",
        "logger": "gql.ops.operations",
        "message": message,
        "request_id": "r-1",
        "job_id": "j-1",
        "state": 7,
        "duration_ms": 1.25,
    }


def test_the_time_is_what_datetime_writes_across_seconds() -> None:
    formatter = JsonFormatter()
    for created in (1_790_000_000.0, 1_790_000_000.9995, 1_790_000_000.9999996, 1_790_000_001.0004):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json.loads(formatter.format(_record(created, "x")))["time"] == expected


def test_a_traceback_stays_in_its_line() -> None:
    record = _record(1_790_000_000.0, "failed")
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    exception = json.loads(JsonFormatter().format(record))["exception"]
    assert exception.startswith("Traceback") and "ValueError: boom" in exception
