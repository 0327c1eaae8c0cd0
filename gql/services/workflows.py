"""What the API does with workflows: validate the tree, record every step, send the canvas."""

from __future__ import annotations

import logging
from typing import Any

from gql.services import webhooks
from gql.services.errors import BadUserInput, NotFound
from gql.services.jobs import EnqueueRequest, JobService
from gql.services.workflow_plan import Planner
from gql.services.workflow_store import Watched, WorkflowStore
from tasks.core import records, slots
from tasks.core.canvas import shape_of, signature, steps_of
from tasks.core.records import JobSnapshot, JobState
from tasks.core.workflow_cancel import Move, revocations
from tasks.core.workflow_records import WorkflowFailure, WorkflowSnapshot, new_workflow_record

logger = logging.getLogger(__name__)


class WorkflowService:
    def __init__(self, jobs: JobService, store: WorkflowStore) -> None:
        self.jobs = jobs
        self.store = store

    async def run(
        self,
        tree: Any,
        options: EnqueueRequest,
        name: str,
        owner: str,
        on_failure: WorkflowFailure = WorkflowFailure.WAIT,
    ) -> Watched:
        """Check the whole tree, record the workflow and its steps in one call, then send
        the canvas through Celery's producer; if it cannot be sent, no record is left.
        ``on_failure`` goes in the record: the worker that records a failed step acts on it."""
        for option in ("countdown", "eta", "expires", "idempotency_key"):
            if getattr(options, option) is not None:
                label = "idempotencyKey" if option == "idempotency_key" else option
                raise BadUserInput.field(f"options.{label}", "is not supported for workflows")
        if options.webhook is not None:
            await webhooks.check(options.webhook, self.jobs.webhook_settings, "options.webhook")
        workflow_id = slots.new_id()
        shared = EnqueueRequest(queue=options.queue, priority=options.priority)
        planned = Planner(
            workflow_id=workflow_id,
            spec=self.jobs.registry.get,
            delivery=lambda spec: self.jobs.planner.delivery(spec, shared),
            max_steps=self.jobs.limit_settings.workflow_max_steps,
        ).plan(tree, "input.root")
        steps = steps_of(planned.root)
        created = records.now()
        step_records = [
            records.new_record(
                job_id=step.job_id,
                task=step.task,
                owner=owner,
                queue=step.queue,
                input_json=planned.shown_inputs[step.job_id],
                created_at=created,
                workflow_id=workflow_id,
            )
            for step in steps
        ]
        workflow = new_workflow_record(
            workflow_id=workflow_id,
            name=name,
            owner=owner,
            steps=[(step.job_id, planned.weights[step.job_id]) for step in steps],
            created_at=created,
            shape=shape_of(planned.root),
            webhook=options.webhook.as_fields() if options.webhook else None,
            on_failure=on_failure,
        )
        await self.store.create(workflow, step_records)
        # Announced before the canvas is sent: a fast worker's STARTED of the first step
        # must not reach a watcher before that step's PENDING.
        for fields in step_records:
            await self.jobs.store.announce(fields)
        try:
            await self.jobs.producer.send_canvas(lambda app: signature(app, planned.root))
        except Exception:
            for fields in step_records:
                await self.jobs.withdraw(fields)
            await self._discard(workflow_id, step_records)
            raise
        return WorkflowSnapshot.from_hash(workflow), [
            JobSnapshot.from_hash(f) for f in step_records
        ]

    async def _discard(self, workflow_id: str, step_records: list[dict[str, str]]) -> None:
        try:
            await self.store.discard(workflow_id, [JobSnapshot.from_hash(f) for f in step_records])
        except Exception:
            logger.exception("could not remove the records of unsent workflow %s", workflow_id)

    async def get(self, workflow_id: str, owner: str | None) -> Watched | None:
        """The workflow and its steps, or None when unknown or someone else's (``owner``
        None: an admin's, who sees every owner's)."""
        found = await self.store.get(workflow_id)
        return found if found is not None and owner in (None, found[0].owner) else None

    async def page(
        self, owner: str | None, limit: int, before: tuple[int, str] | None
    ) -> list[tuple[int, Watched]]:
        """A page of workflows, newest first: ``owner``'s, or every owner's for None."""
        return await self.store.page(owner, limit, before)

    async def require(self, workflow_id: str, owner: str | None) -> Watched:
        found = await self.get(workflow_id, owner)
        if found is None:
            raise NotFound(f"no workflow {workflow_id!r}")
        return found

    async def cancel(self, workflow_id: str, owner: str | None, *, terminate: bool) -> Watched:
        """Revoke every step not finished: waiting ones never run; running ones stop only
        with ``terminate`` (without it they finish, and nothing after them starts)."""
        _, steps = await self.require(workflow_id, owner)
        producer, settings = self.jobs.producer, self.jobs.webhook_settings
        error = records.dumps({"type": "Revoked", "message": "the workflow was cancelled"})
        for revocation in revocations(steps, terminate=terminate):
            step = revocation.step
            if revocation.move is Move.TERMINATE:
                await producer.revoke(step.id, terminate=True)
            elif revocation.move is Move.RECORD:
                _, hooks = await self.jobs.store.transition_hooked(
                    step, JobState.REVOKED, {"error": error}, revocation.allowed_from
                )
                await webhooks.schedule(producer, settings, hooks)
            else:
                try:
                    await producer.revoke(step.id, terminate=False)
                except Exception:
                    logger.warning("revoke of step %s not broadcast; its record stops it", step.id)
        return await self.require(workflow_id, owner)
