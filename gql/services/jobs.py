"""What the API does with jobs, as plain async functions the resolvers call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from gql.ops.operations import job_enqueued
from gql.services import webhooks
from gql.services.errors import BadUserInput, NotFound, ServiceUnavailable
from gql.services.plans import EnqueueRequest, JobPlanner, Prepared, replayed
from gql.services.producer import Producer
from gql.services.store import JobStore
from tasks.core import records, timeline, tracing
from tasks.core.records import CANCELLABLE_STATES, JobSnapshot, JobState
from tasks.core.registry import TaskRegistry, TaskSpec
from tasks.core.scripts import PageQuery
from tasks.core.settings import Settings

__all__ = ["EnqueueRequest", "JobService"]

logger = logging.getLogger(__name__)


class JobService:
    def __init__(
        self, settings: Settings, store: JobStore, producer: Producer, registry: TaskRegistry
    ) -> None:
        self.settings = settings
        # Read once: what callers may send, and where webhooks may go.
        self.limit_settings = settings.limits
        self.webhook_settings = settings.webhooks
        self.store = store
        self.producer = producer
        self.registry = registry
        self.planner = JobPlanner(settings, registry, direct=producer.direct)

    def spec(self, task: str) -> TaskSpec:
        return self.planner.spec(task)

    async def enqueue(
        self, spec: TaskSpec, data: Any, options: EnqueueRequest, owner: str
    ) -> JobSnapshot:
        """Validate, record, then publish; a message that cannot be sent leaves no record."""
        (snapshot,) = await self.enqueue_many([(spec, data, options)], owner, path=None)
        return snapshot

    async def enqueue_many(
        self,
        items: Sequence[tuple[TaskSpec | str, Any, EnqueueRequest]],
        owner: str,
        *,
        path: str | None = "items",
    ) -> list[JobSnapshot]:
        """Every item validated first, then all recorded in one Redis call, or none at all.

        ``items`` are ``(task or its name, input, options)``. Every invalid item is reported
        at once, by its index under ``path``: ``items.3.input.userId`` for ``enqueueMany``,
        ``inputs.3.userId`` for a typed batch, ``input.userId`` for one job (no path).
        """
        self.planner.check_size(items, path)  # before any webhook's URL is resolved
        if not tracing.enabled():
            return await self._enqueue_many(items, owner, path)
        names = {task if isinstance(task, str) else task.name for task, _, _ in items}
        with tracing.publishing(names.pop() if len(names) == 1 else "batch", len(items)) as span:
            snapshots = await self._enqueue_many(items, owner, path)
            if len(snapshots) == 1:
                tracing.published(span, snapshots[0].id)
            return snapshots

    async def _enqueue_many(
        self,
        items: Sequence[tuple[TaskSpec | str, Any, EnqueueRequest]],
        owner: str,
        path: str | None,
    ) -> list[JobSnapshot]:
        for index, (_, _, options) in enumerate(items):
            if options.webhook is not None:
                where = "options.webhook" if path is None else f"{path}.{index}.options.webhook"
                await webhooks.check(options.webhook, self.webhook_settings, where)
        prepared = self.planner.prepare_batch(items, owner, path=path)
        existing = await self._record(prepared)
        return [
            JobSnapshot.from_hash(item.fields)
            if found is None
            else replayed(await self.store.get(found), found, item, owner)
            for item, found in zip(prepared, existing, strict=True)
        ]

    async def _record(self, prepared: list[Prepared]) -> list[str | None]:
        """Record (and send) prepared jobs in one Redis call: per job, None when created, or
        the id of the job its idempotency key already names (nothing written for it)."""
        if not prepared:
            return []
        existing = await self.store.create_many(
            [(p.fields, p.idempotency, p.message) for p in prepared]
        )
        created = [p for p, found in zip(prepared, existing, strict=True) if found is None]
        if created and created[0].message is None:
            await self._publish_elsewhere(created)
        for item in created:
            job_enqueued(item.fields)
        return existing

    async def _publish_elsewhere(self, batch: list[Prepared]) -> None:
        """A broker other than the records' Redis (RabbitMQ): Celery's own producer.

        Each job is announced before its message is sent, so its PENDING reaches watchers
        before any worker's STARTED can. A message that cannot be sent (refused, or not
        taken within ``JOBQL_PUBLISH_TIMEOUT``: it may still land later) takes the whole
        batch back (:meth:`gql.services.store.JobStore.withdraw`): the records go, whoever saw a
        PENDING gets its end, and a message that lands anyway is skipped by its worker. So
        SERVICE_UNAVAILABLE means no job is left that is visible or will run. Only a job a
        worker started already stays: a single one is answered as enqueued (it was sent
        after all); in a batch, SERVICE_UNAVAILABLE names them (``extensions.started``).
        """
        for index, item in enumerate(batch):
            await self.store.announce(item.fields)
            try:
                await self.producer.publish(
                    item.spec.name,
                    item.fields["id"],
                    item.kwargs,
                    item.delivery,
                    item.fields["owner"],
                )
            except Exception:
                started = await self._take_back(batch, announced=index + 1)
                if started and len(batch) == 1:
                    return
                if started:
                    raise ServiceUnavailable(
                        "the broker failed mid-batch; the jobs in extensions.started "
                        "were taken by a worker already, the others were not sent",
                        started=started,
                    ) from None
                raise

    async def _take_back(self, batch: list[Prepared], *, announced: int) -> list[str]:
        """Withdraw every job of a batch that failed to send; the ids a worker started."""
        started = []
        for index, item in enumerate(batch):
            try:
                outcome = await self.store.withdraw(item.fields, announce=index < announced)
            except Exception:
                # Redis too is away: the record stays PENDING, and a message that lands
                # late would run it (README, Guarantees).
                logger.exception("could not take back unsent job %s", item.fields["id"])
                continue
            if outcome not in ("ok", "missing"):
                started.append(item.fields["id"])
        return started

    async def withdraw(self, fields: dict[str, str]) -> None:
        """Tell watchers that saw a job's PENDING that it ended unsent (best effort)."""
        try:
            await self.store.announce(records.unsent(fields))
        except Exception:
            logger.exception("could not announce the end of unsent job %s", fields["id"])

    # ``owner`` below is whose jobs the caller may see: its own, or None for an admin (all).
    # Another owner's job and an unknown one are not told apart: both cost one read and
    # both answer None / NOT_FOUND with the same message.

    async def get(self, job_id: str, owner: str | None) -> JobSnapshot | None:
        """The job, or None when unknown or someone else's (the two are not told apart)."""
        snapshot = await self.store.get(job_id)
        if snapshot is None or (owner is not None and snapshot.owner != owner):
            return None
        return snapshot

    async def get_many(self, job_ids: list[str], owner: str | None) -> list[JobSnapshot]:
        snapshots = await self.store.get_many(job_ids)
        return [s for s in snapshots if owner is None or s.owner == owner]

    async def logs(
        self, job_id: str, job_owner: str, owner: str | None, last: int | None = None
    ) -> list[timeline.LogLine]:
        """The log lines of a job read as ``job_owner``'s, oldest first (the newest ``last``):
        none unless ``owner`` may see that owner's jobs, as for every read."""
        if (owner is not None and job_owner != owner) or last == 0:
            return []
        wanted = timeline.LOG_LINES_KEPT if last is None else min(last, timeline.LOG_LINES_KEPT)
        return timeline.log_lines(await self.store.logs(job_id, wanted))

    async def require(self, job_id: str, owner: str | None) -> JobSnapshot:
        snapshot = await self.get(job_id, owner)
        if snapshot is None:
            raise NotFound(f"no job {job_id!r}")
        return snapshot

    async def page(self, query: PageQuery, *, every_owner: bool = False) -> list[JobSnapshot]:
        """A page of ``query.owner``'s jobs, or with ``every_owner`` (admins) of everyone's."""
        if every_owner:
            return await self.store.page_every_owner(query)
        return await self.store.page(query)

    async def cancel(self, job_id: str, owner: str | None, *, terminate: bool) -> JobSnapshot:
        """Revoke a job: a waiting one never runs; a running one stops only with terminate."""
        snapshot = await self.require(job_id, owner)
        if snapshot.done:
            return snapshot
        (outcome,) = await self._cancel_many([snapshot], terminate=terminate)
        if outcome not in ("ok", *records.TERMINAL_STATES):
            raise BadUserInput.field(
                "terminate", f"the job is {outcome}; pass terminate: true to stop a running job"
            )
        return await self.require(job_id, owner)

    async def _cancel_many(self, snapshots: list[JobSnapshot], *, terminate: bool) -> list[str]:
        """Revoke jobs the caller read, not yet done: one pipelined Redis call for all their
        records and one revoke broadcast. Returns each one's outcome: 'ok', 'missing', or
        the state that refused (a terminal one when it ended meanwhile; a running one
        without ``terminate``)."""
        if not snapshots:
            return []
        if terminate:
            await self.producer.revoke([s.id for s in snapshots], terminate=True)
        error = records.dumps({"type": "Revoked", "message": "the job was cancelled"})
        moves = await self.store.transition_many(
            snapshots,
            JobState.REVOKED,
            {"error": error},
            allowed_from=frozenset() if terminate else CANCELLABLE_STATES,
        )
        for _, hooks in moves:
            await webhooks.schedule(self.producer, self.webhook_settings, hooks)
        outcomes = [outcome for outcome, _ in moves]
        if not terminate:
            stopped = [
                s.id
                for s, outcome in zip(snapshots, outcomes, strict=True)
                if outcome in ("ok", *records.TERMINAL_STATES)
            ]
            try:
                if stopped:
                    await self.producer.revoke(stopped, terminate=False)
            except Exception:
                # The records already say REVOKED and workers check them before running.
                logger.warning("revoke of %d job(s) not broadcast; the records still stop them",
                               len(stopped))  # fmt: skip
        return outcomes

    async def cancel_matching(
        self, query: PageQuery, *, every_owner: bool, terminate: bool
    ) -> BulkOutcome:
        """``cancelJobs``: cancel the next ``query.limit - 1`` jobs of a filter, as
        :meth:`cancel` would each (one page read, one pipelined update, one broadcast)."""
        examined, more = await self._bulk_page(query, every_owner)
        waiting = [s for s in examined if not s.done]
        skipped = [Skipped(s.id, SkipReason.ALREADY_DONE, f"the job is {s.state}")
                   for s in examined if s.done]  # fmt: skip
        cancelled = []
        for snapshot, outcome in zip(
            waiting, await self._cancel_many(waiting, terminate=terminate), strict=True
        ):
            if outcome == "ok":
                cancelled.append(snapshot.id)
            elif outcome == "missing":
                skipped.append(Skipped(snapshot.id, SkipReason.GONE, "the job expired"))
            elif outcome in records.TERMINAL_STATES:
                message = f"the job is {outcome}"
                skipped.append(Skipped(snapshot.id, SkipReason.ALREADY_DONE, message))
            else:
                message = f"the job is {outcome}; pass terminate: true to stop running jobs"
                skipped.append(Skipped(snapshot.id, SkipReason.RUNNING, message))
        return BulkOutcome(len(examined), cancelled, _in_page_order(skipped, examined), more)

    async def retry(self, job_id: str, owner: str | None) -> JobSnapshot:
        """A new job with the same task, input and queue as a finished one, owned by the
        same owner (an admin's retry of someone's job is still theirs). A job is retried
        once: asked again, by this or by ``retryJobs``, the answer is the retry made first."""
        snapshot = await self.require(job_id, owner)
        if not snapshot.done:
            raise BadUserInput.field(
                "id", f"the job is still {snapshot.state}; only done jobs rerun"
            )
        (outcome,) = await self._retry_many([snapshot])
        if isinstance(outcome, BadUserInput):
            raise outcome
        if isinstance(outcome, JobSnapshot):
            return outcome
        retry = await self.store.get(outcome)
        if retry is None:
            raise NotFound(f"the retry of job {job_id}, {outcome}, expired")
        return retry

    async def retry_matching(self, query: PageQuery, *, every_owner: bool) -> BulkOutcome:
        """``retryJobs``: retry the next ``query.limit - 1`` jobs of a filter, as
        :meth:`retry` would each (one page read and one Redis call for every new job)."""
        examined, more = await self._bulk_page(query, every_owner)
        finished = [s for s in examined if s.done]
        skipped = [Skipped(s.id, SkipReason.NOT_DONE, f"the job is still {s.state}")
                   for s in examined if not s.done]  # fmt: skip
        retried = []
        for snapshot, outcome in zip(finished, await self._retry_many(finished), strict=True):
            if isinstance(outcome, JobSnapshot):
                retried.append((snapshot.id, outcome.id))
            elif isinstance(outcome, BadUserInput):
                skipped.append(Skipped(snapshot.id, SkipReason.INVALID, str(outcome)))
            else:
                message = f"retried already, as job {outcome}"
                skipped.append(Skipped(snapshot.id, SkipReason.ALREADY_RETRIED, message, outcome))
        return BulkOutcome(len(examined), retried, _in_page_order(skipped, examined), more)

    async def _retry_many(
        self, snapshots: list[JobSnapshot]
    ) -> list[JobSnapshot | str | BadUserInput]:
        """Retry finished jobs, each once: per job its new job's snapshot, the id of the
        retry an earlier call made, or why it cannot be retried (its task or queue is gone,
        its input no longer valid). Every retry carries the idempotency key
        ``retry:<job id>`` under its owner, so the record script refuses a second retry of
        a job atomically, whichever call, process or replica asks."""
        items = [
            self.planner.prepare(
                (s.task, s.input, EnqueueRequest(queue=s.queue, idempotency_key=retry_key(s.id))),
                s.owner,
            )
            for s in snapshots
        ]
        prepared = [item for item in items if isinstance(item, Prepared)]
        existing = iter(await self._record(prepared))
        return [
            item
            if isinstance(item, BadUserInput)
            else (found if (found := next(existing)) is not None
                  else JobSnapshot.from_hash(item.fields))
            for item in items
        ]  # fmt: skip

    async def _bulk_page(
        self, query: PageQuery, every_owner: bool
    ) -> tuple[list[JobSnapshot], JobSnapshot | None]:
        """The jobs one bulk call acts on (``query.limit - 1`` at most), and the last of them
        when more match (the cursor's job), else None."""
        page = await self.page(query, every_owner=every_owner)
        examined = page[: query.limit - 1]
        return examined, examined[-1] if len(page) > len(examined) else None


def retry_key(job_id: str) -> str:
    """The idempotency key of a job's retry: the mark that it was retried."""
    return f"retry:{job_id}"


class SkipReason(StrEnum):
    NOT_DONE = "NOT_DONE"
    ALREADY_RETRIED = "ALREADY_RETRIED"
    INVALID = "INVALID"
    ALREADY_DONE = "ALREADY_DONE"
    RUNNING = "RUNNING"
    GONE = "GONE"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A job a bulk call left as it was, and why."""

    id: str
    reason: SkipReason
    message: str
    retry_id: str | None = None


@dataclass(frozen=True, slots=True)
class BulkOutcome:
    """What one ``retryJobs`` or ``cancelJobs`` call did: how many jobs it looked at, those
    it changed (ids; for a retry, (job, its retry)), those it skipped, and the job to
    continue after, when more match."""

    examined: int
    done: list[Any]
    skipped: list[Skipped]
    last: JobSnapshot | None


def _in_page_order(skipped: list[Skipped], page: list[JobSnapshot]) -> list[Skipped]:
    order = {snapshot.id: index for index, snapshot in enumerate(page)}
    return sorted(skipped, key=lambda s: order[s.id])
