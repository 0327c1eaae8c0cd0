"""The request a worker makes of each job's message (Celery's ``Task.Request``, named by
:class:`tasks.core.base.JobTask`), showing no job input: whatever producer sent the message (a
plain Celery client fills ``argsrepr``/``kwargsrepr`` with up to 1 KB of the input), the worker's
task events (what Flower and ``celery events`` show), its error lines and its answers to
``celery inspect active/reserved/scheduled/query_task`` (Flower's worker page, which asks for the
input itself, not its representation) carry :data:`tasks.core.messages.HIDDEN_INPUT`.
"""

from __future__ import annotations

from typing import Any

from celery.worker.request import Request

from tasks.core.messages import EMPTY_ARGS, EMPTY_KWARGS, hidden


class JobRequest(Request):  # type: ignore[misc]
    @property
    def argsrepr(self) -> str:
        return hidden(super().argsrepr, EMPTY_ARGS)

    @property
    def kwargsrepr(self) -> str:
        return hidden(super().kwargsrepr, EMPTY_KWARGS)

    def info(self, safe: bool = False) -> dict[str, Any]:
        shown: dict[str, Any] = super().info(safe=True)
        shown.update(args=self.argsrepr, kwargs=self.kwargsrepr)
        return shown
