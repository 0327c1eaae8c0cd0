"""What a task logs with Python's ``logging`` while it runs, added to its job's log lines as
``JobContext.log`` adds them (:mod:`tasks.core.timeline`).

One handler on the root logger, added on a process's first run (a worker's own logging set-up
replaces the root's handlers when it starts, so it is checked again on each run: one look in a
short list). It takes a record only in the context of a running job (:func:`capturing`, around
the body; an ``async def`` body gets it through :func:`within`), and only from loggers that are
not Celery's, its libraries' or JobQL's own. A record reaches it only at the levels the worker
logs at (``JOBQL_LOG_LEVEL``); each line costs the run one Redis round trip, as a
``JobContext.log`` call does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from tasks.core import events

T = TypeVar("T")

# The job whose body runs in this context, if any.
RUNNING: ContextVar[str | None] = ContextVar("jobql_running_job", default=None)

# Loggers whose records are the worker's, not the task's.
_NOT_THE_TASKS = ("celery", "kombu", "amqp", "billiard", "redis", "tasks.core", "tasks.worker",
                  "gql")  # fmt: skip


class JobLogHandler(logging.Handler):
    """Adds a record logged in a running job's context to that job's log lines."""

    def __init__(self) -> None:
        super().__init__()
        self._inside = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        job_id = RUNNING.get()
        if job_id is None or getattr(self._inside, "busy", False):
            return
        name = record.name
        if any(name == own or name.startswith(own + ".") for own in _NOT_THE_TASKS):
            return
        self._inside.busy = True  # whatever writing the line logs is not captured again
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                message = f"{message}: {type(error).__name__}: {error}"
            events.logged(job_id, message, record.levelno)
        except Exception:
            self.handleError(record)
        finally:
            self._inside.busy = False


_handler = JobLogHandler()


def _installed() -> None:
    root = logging.getLogger()
    if _handler not in root.handlers:
        root.addHandler(_handler)


@contextlib.contextmanager
def capturing(job_id: str) -> Iterator[None]:
    """Around a job's body: what it logs in this context goes to the job's log lines."""
    _installed()
    token = RUNNING.set(job_id)
    try:
        yield
    finally:
        RUNNING.reset(token)


async def within(job_id: str, coroutine: Coroutine[Any, Any, T]) -> T:
    """An ``async def`` body awaited in its job's context (it runs on the worker's event
    loop thread, which the Celery thread's context does not reach)."""
    RUNNING.set(job_id)  # this coroutine's task has a context of its own
    return await coroutine
