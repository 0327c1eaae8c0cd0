"""Logs of the API and the worker, one line per record (JSON or readable), carrying what lets one
job be followed from its mutation to the worker and back to a subscription: the job id, the task,
the owner and, in the API, the request id of the exchange (:data:`REQUEST_ID`). Callers pass them
as ``extra={"job_id": ..., ...}``; only the names in :data:`FIELDS` reach a line, so inputs and
results are never logged.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery.signals import setup_logging

from tasks.core.settings import Settings, get_settings

REQUEST_ID: ContextVar[str | None] = ContextVar("jobql_request_id", default=None)

# The structured fields a line may carry, in the order a readable line shows them.
FIELDS = (
    "request_id",
    "job_id",
    "task",
    "owner",
    "state",
    "queue",
    "operation",
    "operation_type",
    "outcome",
    "transport",
    "duration_ms",
    "worker",
    # With tracing on (tasks.core.tracing): the trace and span current when the line was logged.
    "trace_id",
    "span_id",
)

# Filters every line passes, added once a process turned tracing on (tasks.core.tracing_sdk).
_line_filters: list[logging.Filter] = []
_handler: logging.Handler | None = None  # the handler configure_logging installed last


class _RequestId(logging.Filter):
    """Stamps each record with the request id of the exchange that logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k in FIELDS if (v := getattr(record, k, None)) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers.

    The API writes a line per mutation: the line is put together from its parts (strings
    escaped by ``json``'s own C escaper, the time's text kept for a second) rather than
    built as a dict for ``json.dumps``, which took twice as long.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            '{"time":"',
            self._time(record.created),
            '","level":"',
            record.levelname,
            '","logger":',
            _string(record.name),
            ',"message":',
            _string(record.getMessage()),
        ]
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                parts += (',"', key, '":', _value(value))
        if record.exc_info:
            parts += (',"exception":', _string(self.formatException(record.exc_info)))
        parts.append("}")
        return "".join(parts)

    def _time(self, created: float) -> str:
        """ISO-8601 UTC with milliseconds, as ``datetime.isoformat`` writes it."""
        second = int(created)
        micros = round((created - second) * 1_000_000)
        if micros >= 1_000_000:  # rounds up into the next second
            return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._stamp}.{micros // 1000:03d}+00:00"


_string = json.encoder.encode_basestring_ascii  # the C escaper json.dumps uses
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _value(value: object) -> str:
    return _string(value) if type(value) is str else _encode(value)


class TextFormatter(logging.Formatter):
    """A line a person reads: time, level, logger, message, then ``key=value`` fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # a traceback stays below the fields
        return f"{head} {fields}{newline}{rest}"


def configure_logging(settings: Settings) -> None:
    """Route every logger, uvicorn's and Celery's included, through one handler on stderr."""
    # Neither format shows the caller, thread or process: skip collecting them, as the
    # logging HOWTO's "Optimization" section advises (the caller's frame walk is most of a
    # line's cost, and the API writes one line per operation).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(_RequestId())
    for extra in _line_filters:
        handler.addFilter(extra)
    global _handler
    _handler = handler
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    # uvicorn writes its access line whenever "uvicorn.access" has a handler, its own or
    # the root's through propagation (``--no-access-log`` only empties it): our one line per
    # GraphQL operation replaces it, and propagating it cost a log line on every request.
    logging.getLogger("uvicorn.access").propagate = False
    # Celery's "Task x[id] succeeded in 0.1s: <return value>" puts results in the log;
    # tasks.worker.job_metrics logs each run's end without them. Its failures still show (ERROR).
    if settings.log_level != "DEBUG":
        logging.getLogger("celery.app.trace").setLevel(logging.WARNING)


def add_line_filter(line_filter: logging.Filter) -> None:
    """Run ``line_filter`` on every line: of the handler in place and of any installed later."""
    _line_filters.append(line_filter)
    if _handler is not None:
        _handler.addFilter(line_filter)


@setup_logging.connect
def _configure_worker_logging(**_: Any) -> None:
    """A worker logs like the API: Celery leaves logging alone once this receiver exists."""
    configure_logging(get_settings())
