"""The GraphQL types of workflows: the tree a client sends, and the workflow it watches."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from gql.schema.descriptions import describe_values
from gql.schema.types import Job, PageInfo
from gql.schema.webhook_types import WebhookDelivery
from gql.services.webhooks import deliveries
from tasks.core.records import JobSnapshot
from tasks.core.workflow_records import WorkflowFailure as WorkflowFailureValue
from tasks.core.workflow_records import WorkflowSnapshot
from tasks.core.workflow_records import WorkflowState as WorkflowStateValue

WorkflowState = strawberry.enum(
    WorkflowStateValue,
    name="WorkflowState",
    description="Where a workflow is: FAILURE once a step failed, REVOKED once cancelled.",
)
describe_values(
    WorkflowState,
    {
        "PENDING": "Recorded; no step has started yet.",
        "RUNNING": "At least one step started and it is not done.",
        "SUCCESS": "Every step succeeded.",
        "FAILURE": "A step failed; `failedStep` says which.",
        "REVOKED": "Cancelled.",
    },
)


WorkflowFailure = strawberry.enum(
    WorkflowFailureValue,
    name="WorkflowFailure",
    description="What a failed step does to the steps still running beside it (a group's). "
    "Either way the workflow is FAILURE at once and no step that waits starts.",
)
describe_values(
    WorkflowFailure,
    {
        "WAIT": "They run to their end; the workflow is done once they have ended.",
        "FAIL_FAST": "They are terminated, as cancelWorkflow(terminate: true) does; the "
        "workflow is done at once.",
    },
)


@strawberry.input(description="One task of a workflow.")
class WorkflowTaskInput:
    name: str = strawberry.field(description="A typed task; the `tasks` query lists them.")
    input: JSON = strawberry.field(
        default_factory=dict, description="The task's input, camelCase keys."
    )
    result_to: str | None = strawberry.field(
        default=None,
        name="resultTo",
        description="The input field that receives the previous step's result (a list of "
        "results after a group); without it the step ignores that result.",
    )
    result_path: str | None = strawberry.field(
        default=None,
        name="resultPath",
        description='Pass only this part of the result, e.g. "processed.userId".',
    )
    weight: float | None = strawberry.field(
        default=None, description="This step's share of the workflow's progress (default 1)."
    )


@strawberry.input(one_of=True, description="A step: exactly one of task, chain, group, chord.")
class WorkflowStepInput:
    task: WorkflowTaskInput | None = strawberry.field(
        default=strawberry.UNSET, description="One task."
    )
    chain: list[WorkflowStepInput] | None = strawberry.field(
        default=strawberry.UNSET, description="Steps one after another, each result passed on."
    )
    group: list[WorkflowStepInput] | None = strawberry.field(
        default=strawberry.UNSET, description="Steps in parallel; what follows gets a list."
    )
    chord: WorkflowChordInput | None = strawberry.field(
        default=strawberry.UNSET, description="A group, then one task that gets all results."
    )


@strawberry.input(description="A group of steps in parallel, then one task given their results.")
class WorkflowChordInput:
    group: list[WorkflowStepInput] = strawberry.field(description="The steps in parallel.")
    then: WorkflowTaskInput = strawberry.field(
        description="The task that receives the list of results (name its field resultTo)."
    )


@strawberry.input(description="A workflow to run.")
class WorkflowInput:
    name: str = strawberry.field(default="", description="A label for people.")
    root: WorkflowStepInput = strawberry.field(description="The workflow's tree of steps.")
    on_failure: WorkflowFailure = strawberry.field(  # type: ignore[valid-type]
        default=WorkflowFailureValue.WAIT,
        description="When a step fails: let the steps running beside it end (WAIT), or "
        "terminate them (FAIL_FAST).",
    )


@strawberry.type(description="Several jobs run as one Celery canvas, watched under one id.")
class Workflow:
    id: strawberry.ID = strawberry.field(description="The workflow's id.")
    name: str = strawberry.field(description="The label it was given.")
    state: WorkflowState = strawberry.field(description="Where it is now.")  # type: ignore[valid-type]
    done: bool = strawberry.field(description="True once no step can change any more.")
    sequence: int = strawberry.field(description="Grows by one with every change of a step.")
    progress: float = strawberry.field(
        description="0..100: done steps, and running steps' percent, weighted."
    )
    steps: list[Job] = strawberry.field(description="Every step, in the order given.")
    shape: JSON | None = strawberry.field(
        description="The tree of steps as given, each step by its job id; `steps` lists the "
        "same ids in the same order, depth first. A node is exactly one of: "
        '`{"step": "<job id>"}`; `{"chain": [<node>, ...]}`, one after another; '
        '`{"group": [<node>, ...]}`, in parallel; `{"chord": {"header": [<node>, ...], '
        '"body": {"step": "<job id>"}}}`, the header\'s nodes in parallel, then the body. '
        "Every step's id appears exactly once. Null for a workflow recorded before the API "
        "kept its tree."
    )
    failed_step: Job | None = strawberry.field(description="The step that failed the workflow.")
    on_failure: WorkflowFailure = strawberry.field(  # type: ignore[valid-type]
        description="What its first failed step does to the steps running beside it."
    )
    created_at: datetime = strawberry.field(description="When it was run (UTC).")
    finished_at: datetime | None = strawberry.field(
        description="When it reached a final state (UTC)."
    )

    @strawberry.field(description="Every attempt to deliver this workflow's webhook.")
    async def webhook_deliveries(self, info: strawberry.Info) -> list[WebhookDelivery]:
        entries = await deliveries(info.context.jobs.store.client, "workflow", str(self.id))
        return [WebhookDelivery.from_log(entry) for entry in entries]

    @classmethod
    def from_snapshot(cls, workflow: WorkflowSnapshot, steps: list[JobSnapshot]) -> Workflow:
        jobs = [Job.from_snapshot(step) for step in steps]
        return cls(
            id=strawberry.ID(workflow.id),
            name=workflow.name,
            state=workflow.state,
            done=workflow.done,
            sequence=workflow.sequence,
            progress=workflow.progress,
            steps=jobs,
            shape=JSON(workflow.shape) if workflow.shape is not None else None,
            failed_step=next((j for j in jobs if j.id == workflow.failed_step), None),
            on_failure=workflow.on_failure,
            created_at=workflow.created_at,
            finished_at=workflow.finished_at,
        )


@strawberry.type(description="An edge of a workflow connection.")
class WorkflowEdge:
    cursor: str = strawberry.field(description="Pass as `after` for the workflows after this one.")
    node: Workflow = strawberry.field(description="The workflow.")


@strawberry.type(description="A page of workflows, newest first (Relay connection).")
class WorkflowConnection:
    edges: list[WorkflowEdge] = strawberry.field(description="The workflows of this page.")
    page_info: PageInfo = strawberry.field(description="Where this page sits.")
