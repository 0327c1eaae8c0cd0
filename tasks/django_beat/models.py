"""JobQL's part of a schedule kept in django-celery-beat, who owns it and what they gave:
everything beat needs stays on the ``PeriodicTask`` and these rows hold only what JobQL adds, so
a schedule edited in the Django admin (re-timed, disabled) is the schedule JobQL shows.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

from django.db import models
from django_celery_beat.models import PeriodicTask


class Schedule(models.Model):  # type: ignore[misc]
    """One JobQL schedule: its ``PeriodicTask`` and JobQL's fields beside it."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    periodic_task = models.OneToOneField(
        PeriodicTask, on_delete=models.CASCADE, related_name="jobql"
    )
    owner = models.CharField(max_length=255)
    name = models.CharField(max_length=100)
    input = models.JSONField(default=dict, help_text="The input as clients read it.")
    timezone = models.CharField(max_length=64, default="UTC")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_job_id = models.CharField(max_length=64, null=True, blank=True)

    class Meta:
        constraints: ClassVar[list[models.UniqueConstraint]] = [
            models.UniqueConstraint(fields=["owner", "name"], name="jobql_schedule_owner_name")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner})"


class ScheduleOwner(models.Model):  # type: ignore[misc]
    """A row per owner, locked while one of their schedules is created or renamed: the
    name check and the per-owner cap are then exact under concurrent requests."""

    owner = models.CharField(max_length=255, primary_key=True)
