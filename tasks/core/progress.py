"""The progress helper a task body receives as its second argument."""

from __future__ import annotations

import asyncio
from typing import Any

from celery import Task

from tasks.core import events, timeline


class JobContext:
    """What a running job may know and say about itself.

    The id and retry count are captured when the run starts: an ``async def`` task runs on
    another thread, where Celery's thread-local ``task.request`` is empty.
    """

    def __init__(self, task: Task) -> None:
        self._task = task
        self.id: str = task.request.id
        self.retries: int = task.request.retries or 0

    def progress(
        self,
        current: float,
        total: float | None = None,
        message: str | None = None,
        data: Any = None,
    ) -> None:
        """Report progress: stored on the job and broadcast to everyone watching it."""
        meta: dict[str, Any] = {"current": current, "total": total, "message": message}
        if data is not None:
            meta["data"] = data
        self._task.update_state(task_id=self.id, state="PROGRESS", meta=meta)

    def log(self, message: str, level: str | int = "info") -> None:
        """Add a line to the job's log: stored with the job (``Job.logs``) and streamed to
        everyone watching it.

        ``level``: ``"debug"``, ``"info"``, ``"warning"``, ``"error"``, ``"critical"`` or a
        ``logging`` level number. A job keeps its newest 200 lines of at most 1,000
        characters each (a longer line is cut); older lines are dropped and counted
        (``Job.logsDropped``). Best-effort, like progress: a line that cannot be stored
        (Redis unreachable) is dropped, and the task goes on.
        """
        events.logged(self.id, str(message), timeline.level_number(level))

    async def alog(self, message: str, level: str | int = "info") -> None:
        """:meth:`log` for ``async def`` tasks, without blocking their event loop."""
        await asyncio.to_thread(self.log, message, level)

    async def aprogress(
        self,
        current: float,
        total: float | None = None,
        message: str | None = None,
        data: Any = None,
    ) -> None:
        """:meth:`progress` for ``async def`` tasks, without blocking their event loop."""
        await asyncio.to_thread(self.progress, current, total, message, data)
