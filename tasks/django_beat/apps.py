"""The Django app of JobQL's schedules."""

from __future__ import annotations

from django.apps import AppConfig


class JobQLBeatConfig(AppConfig):  # type: ignore[misc]
    name = "tasks.django_beat"
    label = "jobql"
    verbose_name = "JobQL schedules"
    default_auto_field = "django.db.models.BigAutoField"
