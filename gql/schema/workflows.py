"""The workflow fields of the schema: ``workflow(id)``, ``runWorkflow``, ``cancelWorkflow``
and the ``workflow`` subscription (snapshot first, then every step change, to the end)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry
from strawberry.types.field import StrawberryField

from gql.live.broadcast import EventQueue, Resync
from gql.schema.context import Info
from gql.schema.inputs import to_data
from gql.schema.subscriptions import until_expiry
from gql.schema.types import (
    Options,
    Terminate,
    cursor_of,
    decode_cursor,
    enqueue_request,
    page_of,
    page_size,
)
from gql.schema.workflow_types import Workflow, WorkflowConnection, WorkflowEdge, WorkflowInput
from gql.services.auth import Principal
from gql.services.errors import NotFound
from gql.services.workflows import WorkflowService
from tasks.core.records import JobSnapshot
from tasks.core.workflow_records import WorkflowFailure as WorkflowFailureValue
from tasks.core.workflow_records import WorkflowSnapshot, workflow_channel

WorkflowId = Annotated[
    strawberry.ID, strawberry.argument(description="The workflow's id (`Workflow.id`).")
]


def _service(info: Info) -> WorkflowService:
    service = info.context.workflows
    assert service is not None, "the app's lifespan starts the workflow service"
    return service


@strawberry.type
class WorkflowQuery:
    @strawberry.field(
        description="A workflow by id, with its steps; null when unknown or not yours."
    )
    async def workflow(self, info: Info, id: WorkflowId) -> Workflow | None:
        found = await _service(info).get(str(id), info.context.scope)
        return Workflow.from_snapshot(*found) if found else None

    @strawberry.field(
        description="Your workflows, newest first (an admin's: every owner's), while their "
        "records are kept."
    )
    async def workflows(
        self,
        info: Info,
        first: Annotated[
            int | None, strawberry.argument(description="How many, at most the page size.")
        ] = 20,
        after: Annotated[
            str | None, strawberry.argument(description="A cursor: the workflows after that one.")
        ] = None,
    ) -> WorkflowConnection:
        first = page_size(first, info.context.jobs.settings.max_page_size)
        before = decode_cursor(after) if after else None
        found = await _service(info).page(info.context.scope, first + 1, before) if first else []
        edges = [
            WorkflowEdge(
                cursor=cursor_of(score, watched[0].id), node=Workflow.from_snapshot(*watched)
            )
            for score, watched in found
        ]
        page, page_info = page_of(edges, first, after)
        return WorkflowConnection(edges=page, page_info=page_info)


async def run_workflow(
    info: Info,
    input: Annotated[WorkflowInput, strawberry.argument(description="The tree of steps.")],
    options: Options = None,
) -> Workflow:
    tree = to_data(input.root)
    owner = await info.context.admitted()
    found = await _service(info).run(
        tree, enqueue_request(options), input.name, owner, WorkflowFailureValue(input.on_failure)
    )
    return Workflow.from_snapshot(*found)


async def cancel_workflow(info: Info, id: WorkflowId, terminate: Terminate = False) -> Workflow:
    await info.context.admitted()
    scope = info.context.scope
    found = await _service(info).cancel(str(id), scope, terminate=bool(terminate))
    return Workflow.from_snapshot(*found)


def workflow_mutations() -> list[StrawberryField]:
    return [
        strawberry.mutation(
            run_workflow,
            name="runWorkflow",
            description="Run a tree of tasks (chain, group, chord) as one Celery canvas. The "
            "whole tree is checked first; every step is recorded, or none is.",
        ),
        strawberry.mutation(
            cancel_workflow,
            name="cancelWorkflow",
            description="Revoke every step not finished; running steps stop with terminate: true.",
        ),
    ]


@strawberry.type
class WorkflowSubscription:
    @strawberry.subscription(
        description="The workflow now, then one update per change of any step; completes "
        "once the workflow is done."
    )
    async def workflow(self, info: Info, id: WorkflowId) -> AsyncGenerator[Workflow, None]:
        context = info.context
        # Counted against the caller's subscription caps and ended by its token's expiry,
        # as the job streams are.
        async with context.limits.subscription(context):
            service, owner, principal = _service(info), context.scope, context.principal
            # Subscribe first, then read: every step change after the read arrives as an event.
            async with context.broadcast.subscribe(workflow_channel(str(id))) as events:
                with until_expiry(context, events):
                    async for workflow in _changes(service, str(id), owner, principal, events):
                        yield workflow


async def _changes(
    service: WorkflowService,
    workflow_id: str,
    owner: str | None,
    principal: Principal,
    events: EventQueue,
) -> AsyncGenerator[Workflow, None]:
    """The workflow now, then one update per change of any step, to the end."""
    found = await service.get(workflow_id, owner)
    if found is None:
        raise NotFound(f"no workflow {workflow_id!r}")
    workflow, steps = found
    current = {step.id: step for step in steps}
    yield Workflow.from_snapshot(workflow, steps)
    while not workflow.done:
        item = await events.get()
        principal.check()
        if isinstance(item, Resync):
            found = await service.get(workflow_id, owner)
            if found is None:
                raise NotFound(f"workflow {workflow_id!r} expired")
            if found[0].sequence <= workflow.sequence:
                continue
            workflow, steps = found
            current = {step.id: step for step in steps}
        elif item.workflow is not None:
            # The workflow's whole record as the update script read it, its shape too.
            changed = WorkflowSnapshot.from_hash(item.workflow)
            if changed.sequence <= workflow.sequence:
                continue
            workflow = changed
            if _newer(item, current.get(item.id)):
                current[item.id] = item
        else:
            continue
        yield Workflow.from_snapshot(workflow, [current[s] for s in workflow.steps if s in current])


def _newer(step: JobSnapshot, known: JobSnapshot | None) -> bool:
    return known is None or step.sequence > known.sequence
