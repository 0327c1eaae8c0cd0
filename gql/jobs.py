"""What the API does with jobs, as plain async functions the resolvers call."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gql.errors import BadUserInput, NotFound
from gql.producer import Delivery, Producer
from gql.store import JobStore
from tasks import records
from tasks.messages import PRIORITY_STEPS, queue_key, task_message
from tasks.records import CANCELLABLE_STATES, JobSnapshot, JobState
from tasks.registry import TaskRegistry, TaskSpec
from tasks.scripts import PageQuery
from tasks.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EnqueueRequest:
    """``EnqueueOptions`` as the service reads them; every field optional."""

    countdown: float | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    priority: int | None = None
    queue: str | None = None
    idempotency_key: str | None = None


class JobService:
    def __init__(
        self, settings: Settings, store: JobStore, producer: Producer, registry: TaskRegistry
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.registry = registry
        # Task modules are imported before the service starts: the set is fixed from here.
        self._queues = frozenset({*settings.queues, *(s.queue for s in registry.typed if s.queue)})

    def spec(self, task: str) -> TaskSpec:
        spec = self.registry.get(task)
        if spec is None:
            raise BadUserInput.field("task", f"unknown task {task!r}; the `tasks` query lists them")
        return spec

    async def enqueue(
        self, spec: TaskSpec, data: Any, options: EnqueueRequest, owner: str
    ) -> JobSnapshot:
        """Validate, record, then publish; a message that cannot be sent leaves no record."""
        if not isinstance(data, dict):
            raise BadUserInput.field("input", "must be a JSON object")
        try:
            kwargs, shown_input = spec.prepare(data)
        except ValidationError as exc:
            raise BadUserInput.from_validation(exc, "input") from None
        delivery = self._delivery(spec, options)
        created = records.now()
        fields = records.new_record(
            job_id=str(uuid.uuid4()),
            task=spec.name,
            owner=owner,
            queue=delivery.queue,
            input_json=shown_input,
            created_at=created,
            idempotency=options.idempotency_key,
        )
        message = None
        if self.producer.direct:
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
            )
            message = (queue_key(delivery.queue, delivery.priority), body)
        existing = await self.store.create(fields, options.idempotency_key, message)
        if existing is not None:
            return await self._replay(existing, spec, shown_input)
        snapshot = JobSnapshot.from_hash(fields)
        if message is None:
            await self._publish_elsewhere(spec, snapshot, kwargs, delivery, fields)
        return snapshot

    async def _publish_elsewhere(
        self,
        spec: TaskSpec,
        snapshot: JobSnapshot,
        kwargs: dict[str, Any],
        delivery: Delivery,
        fields: dict[str, str],
    ) -> None:
        """A broker other than the records' Redis (RabbitMQ): Celery's own producer."""
        try:
            await self.producer.publish(spec.name, snapshot.id, kwargs, delivery)
        except Exception:
            await self._discard(snapshot)
            raise
        await self.store.announce(fields)

    async def _replay(self, job_id: str, spec: TaskSpec, shown_input: Any) -> JobSnapshot:
        """The same idempotency key returns the same job, if it was the same request."""
        snapshot = await self.store.get(job_id)
        if snapshot is None:
            raise NotFound(f"job {job_id} expired; retry without the idempotency key")
        if snapshot.task != spec.name or snapshot.input != shown_input:
            raise BadUserInput.field(
                "options.idempotencyKey", "already used for a different task or input"
            )
        return snapshot

    async def _discard(self, snapshot: JobSnapshot) -> None:
        try:
            await self.store.discard(snapshot)
        except Exception:
            logger.exception("could not remove the record of unsent job %s", snapshot.id)

    def _delivery(self, spec: TaskSpec, options: EnqueueRequest) -> Delivery:
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

    async def get(self, job_id: str, owner: str) -> JobSnapshot | None:
        """The job, or None when unknown or someone else's (the two are not told apart)."""
        snapshot = await self.store.get(job_id)
        return snapshot if snapshot is not None and snapshot.owner == owner else None

    async def get_many(self, job_ids: list[str], owner: str) -> list[JobSnapshot]:
        return [s for s in await self.store.get_many(job_ids) if s.owner == owner]

    async def require(self, job_id: str, owner: str) -> JobSnapshot:
        snapshot = await self.get(job_id, owner)
        if snapshot is None:
            raise NotFound(f"no job {job_id!r}")
        return snapshot

    async def page(self, query: PageQuery) -> list[JobSnapshot]:
        return await self.store.page(query)

    async def cancel(self, job_id: str, owner: str, *, terminate: bool) -> JobSnapshot:
        """Revoke a job: a waiting one never runs; a running one stops only with terminate."""
        snapshot = await self.require(job_id, owner)
        if snapshot.done:
            return snapshot
        if terminate:
            await self.producer.revoke(job_id, terminate=True)
        error = records.dumps({"type": "Revoked", "message": "the job was cancelled"})
        outcome = await self.store.transition(
            snapshot,
            JobState.REVOKED,
            {"error": error},
            allowed_from=frozenset() if terminate else CANCELLABLE_STATES,
        )
        if outcome not in ("ok", *records.TERMINAL_STATES):
            raise BadUserInput.field(
                "terminate", f"the job is {outcome}; pass terminate: true to stop a running job"
            )
        if not terminate:
            try:
                await self.producer.revoke(job_id, terminate=False)
            except Exception:
                # The record already says REVOKED and workers check it before running.
                logger.warning("revoke of job %s not broadcast; the record still stops it", job_id)
        return await self.require(job_id, owner)

    async def retry(self, job_id: str, owner: str) -> JobSnapshot:
        """A new job with the same task, input and queue as a finished one."""
        snapshot = await self.require(job_id, owner)
        if not snapshot.done:
            raise BadUserInput.field(
                "id", f"the job is still {snapshot.state}; only done jobs rerun"
            )
        spec = self.spec(snapshot.task)
        return await self.enqueue(spec, snapshot.input, EnqueueRequest(queue=snapshot.queue), owner)
