"""JobQL's Celery side: :mod:`tasks.core`, the kernel the API and the worker share, and
:mod:`tasks.worker`, what runs inside a worker (the API never imports it). What a project writing
tasks needs is here, read lazily so that importing any part of ``tasks.core`` does not build the
Celery app::

    from tasks import JobContext, JobModel, celery_app, job
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.core.app import celery_app, job
    from tasks.core.models import JobModel
    from tasks.core.progress import JobContext

__all__ = ["JobContext", "JobModel", "celery_app", "job"]

_FACES = {
    "celery_app": "tasks.core.app",
    "job": "tasks.core.app",
    "JobModel": "tasks.core.models",
    "JobContext": "tasks.core.progress",
}


def __getattr__(name: str) -> Any:
    if name not in _FACES:
        raise AttributeError(f"module 'tasks' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_FACES[name]), name)
