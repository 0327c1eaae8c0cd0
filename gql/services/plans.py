"""The enqueue core, with no I/O: a batch checked, each job's record and Celery message shaped,
and what a replayed idempotency key answers; :class:`gql.services.jobs.JobService` (on the loop)
and :class:`gql.services.blocking.BlockingJobs` (synchronous code) are its adapters, doing only
the I/O, so a job is checked, recorded, replayed and taken back alike wherever it starts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gql.services.errors import BadUserInput, NotFound
from gql.services.producer import Delivery
from gql.services.webhooks import Webhook
from tasks.core import records, slots, tracing
from tasks.core.messages import PRIORITY_STEPS, queue_key, task_message
from tasks.core.records import JobSnapshot
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

    def prepare_batch(
        self, items: Sequence[Item], owner: str, *, path: str | None = "items"
    ) -> list[Prepared]:
        """Every item checked before anything is written; raises one :class:`BadUserInput`
        naming every invalid field by its index under ``path``: ``items.3.input.userId`` for
        ``enqueueMany``, ``inputs.3.userId`` for a typed batch, ``input.userId`` for one job
        (no path). A batch shares one slot tag, so it stays one atomic call on a Cluster."""
        self.check_size(items, path)
        tag = _batch_tag(items, owner)
        batch = [self.prepare(item, owner, tag=tag) for item in items]
        errors: list[dict[str, str]] = []
        for index, item in enumerate(batch):
            if isinstance(item, BadUserInput):
                errors += [f for f in _under(item, path, index) if f not in errors]
        if errors:
            summary = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
            raise BadUserInput(f"Invalid input: {summary}", errors)
        prepared = [p for p in batch if isinstance(p, Prepared)]
        _refuse_repeated_keys(prepared, path or "items")
        return prepared

    def check_size(self, items: Sequence[Item], path: str | None) -> None:
        limit = self.settings.max_batch_size
        if path is not None and not 1 <= len(items) <= limit:
            raise BadUserInput.field(path, f"give 1 to {limit} items")

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
            trace_id=tracing.current_trace_id(),
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
                # The caller's publish span (JobService.enqueue_many): the worker's run
                # span is its child (tasks.core.tracing).
                trace=tracing.current_headers(),
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


Item = tuple[TaskSpec | str, Any, EnqueueRequest]


def replayed(found: JobSnapshot | None, job_id: str, item: Prepared, owner: str) -> JobSnapshot:
    """What a request whose idempotency key names an existing job gets: that job, if it was
    the same request by the same owner; else why not."""
    if found is None or found.owner != owner:
        raise NotFound(f"job {job_id} expired; retry without the idempotency key")
    if found.task != item.spec.name or found.input != item.shown_input:
        raise BadUserInput.field(
            "options.idempotencyKey", "already used for a different task or input"
        )
    return found


def _under(error: BadUserInput, path: str | None, index: int) -> list[dict[str, str]]:
    """The error's field paths as the client wrote them: below ``items.<index>`` for
    ``enqueueMany``, ``inputs.<index>`` in place of ``input`` for a typed batch (whose
    options are the batch's own), unchanged for a single job."""
    fields: list[dict[str, str]] = error.extensions["fields"]
    if path is None:
        return fields
    if path == "inputs":
        return [{**f, "path": re.sub(r"^input\b", f"inputs.{index}", f["path"])} for f in fields]
    return [{**f, "path": f"{path}.{index}.{f['path']}"} for f in fields]


def _batch_tag(items: Sequence[Item], owner: str) -> str:
    """One tag for a whole batch: the first idempotency key's, or any. Only a batch whose keys
    fall on several tags is split (see :meth:`gql.services.store.JobStore.create_many`)."""
    for _, _, options in items:
        if options.idempotency_key is not None:
            return records.idempotency_tag(owner, options.idempotency_key)
    return slots.tag_of(slots.new_id())


def _refuse_repeated_keys(batch: list[Prepared], path: str) -> None:
    """Two items of one batch with one idempotency key would be one job: say so instead."""
    first: dict[str, int] = {}
    for index, item in enumerate(batch):
        key = item.idempotency
        if key is None:
            continue
        if key in first:
            raise BadUserInput.field(
                f"{path}.{index}.options.idempotencyKey",
                f"repeats the key of item {first[key]} in the same batch",
            )
        first[key] = index
