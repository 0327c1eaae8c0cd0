"""The operator's fields: ``retryJobs`` and ``cancelJobs`` over the ``jobs`` filter, the dead
letters (``deadLetters``, ``requeueDeadLetter``, ``discardDeadLetter``) and ``pauseQueue`` /
``resumeQueue`` (admins only). Jobs and dead letters are the caller's own, every owner's for an
admin, as everywhere else."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.types.field import StrawberryField

from gql.schema.context import Info
from gql.schema.operator_types import (
    CancelJobsResult,
    DeadLetter,
    DeadLetterConnection,
    DeadLetterRequeued,
    RetryJobsResult,
)
from gql.schema.types import JobFilter, Queue, encode_cursor
from gql.services.dead_letters import DeadLetters
from gql.services.dead_letters import encode_cursor as letter_cursor
from gql.services.errors import BadUserInput, Forbidden
from gql.services.jobs import BulkOutcome
from tasks.core.scripts import PageQuery

Filter = Annotated[
    JobFilter,
    strawberry.argument(description="Which jobs: the `jobs` filter (`{}` for all of them)."),
]
First = Annotated[
    int | None,
    strawberry.argument(
        description="How many jobs of the filter to act on, at most `JOBQL_MAX_BULK_SIZE` "
        "(500), which is also the default."
    ),
]
After = Annotated[
    str | None,
    strawberry.argument(description="The `cursor` of the previous call: go on after it."),
]
LetterId = Annotated[
    strawberry.ID, strawberry.argument(description="The dead letter's id (`DeadLetter.id`).")
]
Terminate = Annotated[
    bool | None,
    strawberry.argument(description="Also stop the running ones (SIGTERM to their worker)."),
]
QueueName = Annotated[str, strawberry.argument(description="The queue's name (`Queue.name`).")]


def _bulk_query(info: Info, filter: JobFilter, first: int | None, after: str | None) -> PageQuery:
    """The next jobs of ``filter`` one bulk call acts on: one more is read, to know if more
    follow."""
    limit = info.context.jobs.limit_settings.max_bulk_size
    first = limit if first is None else first
    if not 1 <= first <= limit:
        raise BadUserInput.field("first", f"must be 1..{limit}")
    scope = info.context.scope
    return filter.query(info.context.owner if scope is None else scope, first + 1, after)


def _cursor(outcome: BulkOutcome) -> str | None:
    return encode_cursor(outcome.last) if outcome.last is not None else None


def _admin(info: Info, field: str) -> str:
    principal = info.context.principal
    principal.check()
    if not principal.admin:
        raise Forbidden(f"{field} is for admins only")
    return principal.owner


@strawberry.type
class OperatorQuery:
    @strawberry.field(
        description="Task messages workers could not run, newest first: yours (an admin's: "
        "all, also those that name no owner). The last 1,000 are kept."
    )
    async def dead_letters(
        self,
        info: Info,
        first: Annotated[
            int, strawberry.argument(description="How many entries, at most the page size.")
        ] = 20,
        after: Annotated[
            str | None, strawberry.argument(description="A cursor: the entries after that one.")
        ] = None,
    ) -> DeadLetterConnection:
        limit = info.context.jobs.settings.max_page_size
        if not 1 <= first <= limit:
            raise BadUserInput.field("first", f"must be 1..{limit}")
        service = DeadLetters(info.context.jobs)
        page, more = await service.page(info.context.scope, first, after)
        return DeadLetterConnection(
            nodes=[DeadLetter.of(entry) for _, entry in page],
            has_next_page=more,
            end_cursor=letter_cursor(page[-1][0], page[-1][1].id) if page else None,
        )


async def retry_jobs(
    info: Info, filter: Filter, first: First = None, after: After = None
) -> RetryJobsResult:
    await info.context.admitted()
    query = _bulk_query(info, filter, first, after)
    outcome = await info.context.jobs.retry_matching(query, every_owner=info.context.scope is None)
    return RetryJobsResult.of(outcome, _cursor(outcome))


async def cancel_jobs(
    info: Info,
    filter: Filter,
    terminate: Terminate = False,
    first: First = None,
    after: After = None,
) -> CancelJobsResult:
    await info.context.admitted()
    query = _bulk_query(info, filter, first, after)
    outcome = await info.context.jobs.cancel_matching(
        query, every_owner=info.context.scope is None, terminate=bool(terminate)
    )
    return CancelJobsResult.of(outcome, _cursor(outcome))


async def requeue_dead_letter(info: Info, id: LetterId) -> DeadLetterRequeued:
    await info.context.admitted()
    requeued = await DeadLetters(info.context.jobs).requeue(str(id), info.context.scope)
    return DeadLetterRequeued.of(requeued)


async def discard_dead_letter(info: Info, id: LetterId) -> DeadLetter:
    await info.context.admitted()
    entry = await DeadLetters(info.context.jobs).discard(str(id), info.context.scope)
    return DeadLetter.of(entry)


async def pause_queue(info: Info, name: QueueName) -> Queue:
    by = _admin(info, "pauseQueue")
    await info.context.admitted()
    return Queue.from_state(await info.context.health.control.pause(name, by))


async def resume_queue(info: Info, name: QueueName) -> Queue:
    _admin(info, "resumeQueue")
    await info.context.admitted()
    return Queue.from_state(await info.context.health.control.resume(name))


def operator_mutations() -> list[StrawberryField]:
    return [
        strawberry.mutation(
            retry_jobs,
            name="retryJobs",
            description="Retry the finished jobs of a filter, as `retryJob` does each, the next "
            "`first` of them per call (follow `cursor`). A job is retried once: asked again, "
            "it is skipped as ALREADY_RETRIED.",
        ),
        strawberry.mutation(
            cancel_jobs,
            name="cancelJobs",
            description="Cancel the jobs of a filter, as `cancelJob` does each, the next "
            "`first` of them per call (follow `cursor`); running ones only with terminate: true.",
        ),
        strawberry.mutation(
            requeue_dead_letter,
            name="requeueDeadLetter",
            description="Put a dead letter's message back on its queue (a job that failed for "
            "being set aside is retried instead); refused when a worker cannot read it.",
        ),
        strawberry.mutation(
            discard_dead_letter,
            name="discardDeadLetter",
            description="Drop a dead letter for good.",
        ),
        strawberry.mutation(
            pause_queue,
            name="pauseQueue",
            description="Admins: stop every worker consuming a queue (Celery's "
            "cancel_consumer); its jobs wait, and workers started meanwhile leave it alone.",
        ),
        strawberry.mutation(
            resume_queue,
            name="resumeQueue",
            description="Admins: consume a paused queue again on the workers that served it "
            "(Celery's add_consumer); its waiting jobs run.",
        ),
    ]
