"""Turning a request into a job, with no I/O: validation, the record and the Celery message.

The API's :class:`gql.services.jobs.JobService` (async, on the event loop) and
:class:`gql.services.blocking.BlockingJobs` (synchronous code: Django views, signals, transactions)
both enqueue through it, so a job is checked and shaped the same way wherever it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gql.services.errors import BadUserInput
from gql.services.producer import Delivery
from gql.services.webhooks import Webhook
from tasks.core import records, slots
from tasks.core.messages import PRIORITY_STEPS, queue_key, task_message
from tasks.core.registry import TaskRegistry, TaskSpec
from tasks.core.settings import Settings


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """``EnqueueOptions`` as the service reads them; every field optional."""

    countdown: float | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    priority: int | None = None
    queue: str | None = None
    idempotency_key: str | None = None
    webhook: Webhook | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """One validated item of a batch: what to record and what to send."""

    spec: TaskSpec
    kwargs: dict[str, Any]
    shown_input: Any
    delivery: Delivery
    fields: dict[str, str]
    message: tuple[str, str] | None  # (queue key, Celery message) when the broker is Redis

    @property
    def idempotency(self) -> str | None:
        return self.fields["idempotency_key"] or None


class JobPlanner:
    """Checks an item against its task and the settings, and shapes its record and message."""

    def __init__(self, settings: Settings, registry: TaskRegistry, *, direct: bool) -> None:
        self.settings = settings
        self.registry = registry
        # The broker is the records' Redis: the message is written with the record.
        self.direct = direct
        # Task modules are imported before the planner is built: the set is fixed from here.
        self._queues = frozenset({*settings.queues, *(s.queue for s in registry.typed if s.queue)})

    def spec(self, task: str) -> TaskSpec:
        spec = self.registry.get(task)
        if spec is None:
            raise BadUserInput.field("task", f"unknown task {task!r}; the `tasks` query lists them")
        return spec

    def prepare(
        self,
        item: tuple[TaskSpec | str, Any, EnqueueRequest],
        owner: str,
        job_id: str | None = None,
        *,
        tag: str | None = None,
    ) -> Prepared | BadUserInput:
        """One item checked and turned into its record and message; errors are returned.

        ``job_id``: an id chosen earlier (a job promised inside a transaction); else a new one,
        on ``tag`` (tasks.core.slots: a batch shares one), or on its idempotency key's tag.
        """
        task, data, options = item
        try:
            spec = self.spec(task) if isinstance(task, str) else task
            if not isinstance(data, dict):
                raise BadUserInput.field("input", "must be a JSON object")
            try:
                kwargs, shown_input = spec.prepare(data)
            except ValidationError as exc:
                raise BadUserInput.from_validation(exc, "input") from None
            delivery = self.delivery(spec, options)
        except BadUserInput as exc:
            return exc
        created = records.now()
        if options.idempotency_key is not None:
            tag = records.idempotency_tag(owner, options.idempotency_key)
        fields = records.new_record(
            job_id=job_id or slots.new_id(tag),
            task=spec.name,
            owner=owner,
            queue=delivery.queue,
            input_json=shown_input,
            created_at=created,
            idempotency=options.idempotency_key,
            webhook=options.webhook.as_fields() if options.webhook else None,
        )
        if len(fields["input"]) > self.settings.max_input_bytes:
            limit = self.settings.max_input_bytes
            return BadUserInput.field("input", f"longer than {limit} characters of JSON")
        message = None
        if self.direct:
            body = task_message(
                task=spec.name,
                job_id=fields["id"],
                kwargs=kwargs,
                queue=delivery.queue,
                now=created,
                countdown=delivery.countdown,
                eta=delivery.eta,
                expires=delivery.expires,
                priority=delivery.priority,
                owner=owner,
            )
            message = (queue_key(delivery.queue, delivery.priority), body)
        return Prepared(spec, kwargs, shown_input, delivery, fields, message)

    def delivery(self, spec: TaskSpec, options: EnqueueRequest) -> Delivery:
        queue = options.queue or spec.queue or self.settings.default_queue
        if queue not in self._queues:
            known = ", ".join(sorted(self._queues))
            raise BadUserInput.field("options.queue", f"unknown queue {queue!r}; known: {known}")
        if options.countdown is not None and options.eta is not None:
            raise BadUserInput.field("options.eta", "give either countdown or eta, not both")
        if options.countdown is not None and not 0 <= options.countdown <= 365 * 24 * 3600:
            raise BadUserInput.field("options.countdown", "must be between 0 and one year")
        for name, moment in (("eta", options.eta), ("expires", options.expires)):
            if moment is not None and moment.tzinfo is None:
                raise BadUserInput.field(f"options.{name}", "must carry a UTC offset")
        if options.expires is not None and options.expires <= datetime.now(UTC):
            raise BadUserInput.field("options.expires", "must be in the future")
        if options.priority is not None and options.priority not in PRIORITY_STEPS:
            raise BadUserInput.field(
                "options.priority", f"must be {PRIORITY_STEPS[0]}..{PRIORITY_STEPS[-1]}"
            )
        if options.idempotency_key is not None and not 1 <= len(options.idempotency_key) <= 200:
            raise BadUserInput.field("options.idempotencyKey", "must be 1 to 200 characters")
        return Delivery(
            queue=queue,
            countdown=options.countdown,
            eta=options.eta,
            expires=options.expires,
            priority=options.priority,
        )
