"""Enqueueing from synchronous code (Django views, signals, ``transaction.on_commit``, shells),
which cannot await the API's service and must never block a loop: the blocking adapter of the
enqueue core (:mod:`gql.services.plans`), with the same checks, replay rule, and
record-and-message and take-back scripts on a synchronous Redis client."""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery

from gql.ops.operations import job_enqueued
from gql.services.errors import BadUserInput
from gql.services.plans import EnqueueRequest, JobPlanner, Prepared, replayed
from gql.services.producer import send_task
from tasks.core import events, records, redis_clients, scripts, slots, tracing
from tasks.core.app import create_celery_app
from tasks.core.message_writer import writes_messages
from tasks.core.records import JobSnapshot
from tasks.core.registry import TaskRegistry, TaskSpec
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)


class BlockingJobs:
    """Validate and enqueue jobs with blocking I/O; never call it on an event loop."""

    def __init__(self, settings: Settings, registry: TaskRegistry) -> None:
        self.settings = settings
        self._app: Celery = create_celery_app(settings, producer=True)
        self.planner = JobPlanner(settings, registry, direct=writes_messages(self._app, settings))
        slots.configure(settings.layout)
        self._redis: redis.Redis = (
            redis_clients.sync_cluster(settings.records, settings)  # type: ignore[assignment]
            if settings.records_cluster
            else redis_clients.sync_client(settings.records, settings)
        )
        self._create = self._redis.register_script(scripts.CREATE_SCRIPT)
        self._withdraw = self._redis.register_script(scripts.WITHDRAW_SCRIPT)

    def prepare(
        self,
        task: TaskSpec | str,
        data: Any,
        owner: str,
        options: EnqueueRequest | None = None,
        job_id: str | None = None,
    ) -> Prepared:
        """The job checked and shaped, nothing written; raises :class:`BadUserInput`."""
        options = options or EnqueueRequest()
        if options.webhook is not None:
            # Its URL check resolves names asynchronously; the API's mutations take it.
            raise BadUserInput.field("options.webhook", "give webhooks through the API")
        if job_id is None:
            (prepared,) = self.planner.prepare_batch([(task, data, options)], owner, path=None)
            return prepared
        # A job promised earlier, inside a transaction, keeps the id it was given.
        found = self.planner.prepare((task, data, options), owner, job_id)
        if isinstance(found, BadUserInput):
            raise found
        return found

    def write(self, prepared: Prepared) -> JobSnapshot:
        """Record the job and send its message: both or neither, as the API does."""
        fields = prepared.fields
        call = scripts.create_call(
            fields,
            ttl=self.settings.job_retention_seconds,
            idempotency=prepared.idempotency,
            message=prepared.message,
        )
        existing = self._create(keys=call.keys, args=call.args)
        if existing:
            return replayed(self.get(str(existing)), str(existing), prepared, fields["owner"])
        if prepared.message is None:
            self._publish_elsewhere(prepared)
        job_enqueued(fields)
        return JobSnapshot.from_hash(fields)

    def enqueue(
        self,
        task: TaskSpec | str,
        data: Any,
        owner: str,
        options: EnqueueRequest | None = None,
    ) -> JobSnapshot:
        with tracing.publishing(task if isinstance(task, str) else task.name) as span:
            snapshot = self.write(self.prepare(task, data, owner, options))
            tracing.published(span, snapshot.id)
            return snapshot

    def get(self, job_id: str) -> JobSnapshot | None:
        row: dict[str, str] = self._redis.hgetall(records.job_key(job_id))  # type: ignore[assignment]
        return JobSnapshot.from_hash(row) if row else None

    def _publish_elsewhere(self, prepared: Prepared) -> None:
        """Another broker (RabbitMQ): the PENDING event, then Celery's producer (a worker's
        STARTED never reaches a watcher first). A message that cannot be sent takes its job
        back with the API's script (:meth:`gql.services.store.JobStore.withdraw`): the record
        goes, whoever saw its PENDING gets its end, unless a worker started it already."""
        fields, to = prepared.fields, prepared.delivery
        events.announce(fields, on=self._redis)
        try:
            send_task(
                self._app,
                self.settings.broker,
                prepared.spec.name,
                fields["id"],
                prepared.kwargs,
                to,
                fields["owner"],
            )
        except Exception:
            call = scripts.withdraw_call(
                fields, records.unsent(fields), ttl=self.settings.job_retention_seconds
            )
            try:
                outcome = str(self._withdraw(keys=call.keys, args=call.args))
            except Exception:
                logger.exception("could not take back unsent job %s", fields["id"])
                raise
            if outcome in ("ok", "missing"):
                raise
            logger.info("job %s was not sent but a worker took it already", fields["id"])

    def close(self) -> None:
        self._redis.close()
        self._app.close()
