"""Celery apps as the processes under test configure them."""

from __future__ import annotations

from celery import Celery

from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tasks.worker.app import worker_config


def worker_app(settings: Settings) -> Celery:
    """An app configured as a worker started on ``settings`` configures it (its bootsteps
    aside): the worker's result backend, its fixes and speed-ups decided."""
    app = create_celery_app(settings)
    app.conf.update(worker_config(settings))
    return app
