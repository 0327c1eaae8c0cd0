"""The types of the operator's fields (:mod:`gql.schema.operator`): what a bulk retry or cancel
did, and the dead letters."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from gql.schema.descriptions import describe_values
from gql.services.dead_letters import Requeued
from gql.services.jobs import BulkOutcome, Skipped
from gql.services.jobs import SkipReason as SkipReasonValue
from tasks.core.dead_letters import DeadLetter as DeadLetterEntry

SkipReason = strawberry.enum(
    SkipReasonValue,
    name="SkipReason",
    description="Why `retryJobs` or `cancelJobs` left a job of its filter as it was.",
)

describe_values(
    SkipReason,
    {
        "NOT_DONE": "Not finished yet: only finished jobs are retried.",
        "ALREADY_RETRIED": "Retried before (by `retryJob` or `retryJobs`); `retryId` names it.",
        "INVALID": "Its task, queue or input is no longer accepted; `message` says which.",
        "ALREADY_DONE": "Finished already: nothing to cancel.",
        "RUNNING": "A worker runs it; pass `terminate: true` to stop running jobs too.",
        "GONE": "Its record expired between the read and the change.",
    },
)


@strawberry.type(description="A job a bulk call left as it was, and why.")
class SkippedJob:
    id: strawberry.ID = strawberry.field(description="The job's id.")
    reason: SkipReason = strawberry.field(description="Why it was left.")  # type: ignore[valid-type]
    message: str = strawberry.field(description="The reason in words.")
    retry_id: strawberry.ID | None = strawberry.field(
        description="For ALREADY_RETRIED: the job that retried it."
    )

    @classmethod
    def of(cls, skipped: Skipped) -> SkippedJob:
        retry = strawberry.ID(skipped.retry_id) if skipped.retry_id else None
        return cls(
            id=strawberry.ID(skipped.id),
            reason=skipped.reason,
            message=skipped.message,
            retry_id=retry,
        )


@strawberry.type(description="A job `retryJobs` retried, and the new job that reruns it.")
class RetriedJob:
    id: strawberry.ID = strawberry.field(description="The finished job.")
    retry_id: strawberry.ID = strawberry.field(description="Its retry: a new job, now PENDING.")


@strawberry.type(description="What one `retryJobs` call did with the next jobs of its filter.")
class RetryJobsResult:
    examined: int = strawberry.field(description="Jobs of the filter this call looked at.")
    retried_count: int = strawberry.field(description="How many it retried.")
    retried: list[RetriedJob] = strawberry.field(description="Each retried job and its retry.")
    skipped_count: int = strawberry.field(description="How many it left as they were.")
    skipped: list[SkippedJob] = strawberry.field(description="Each job left, and why.")
    cursor: str | None = strawberry.field(
        description="Pass as `after` to go on with the next jobs; null when none are left."
    )

    @classmethod
    def of(cls, outcome: BulkOutcome, cursor: str | None) -> RetryJobsResult:
        retried = [
            RetriedJob(id=strawberry.ID(job), retry_id=strawberry.ID(retry))
            for job, retry in outcome.done
        ]
        return cls(
            examined=outcome.examined,
            retried_count=len(retried),
            retried=retried,
            skipped_count=len(outcome.skipped),
            skipped=[SkippedJob.of(s) for s in outcome.skipped],
            cursor=cursor,
        )


@strawberry.type(description="What one `cancelJobs` call did with the next jobs of its filter.")
class CancelJobsResult:
    examined: int = strawberry.field(description="Jobs of the filter this call looked at.")
    cancelled_count: int = strawberry.field(description="How many it cancelled (now REVOKED).")
    cancelled: list[strawberry.ID] = strawberry.field(description="The ids of those jobs.")
    skipped_count: int = strawberry.field(description="How many it left as they were.")
    skipped: list[SkippedJob] = strawberry.field(description="Each job left, and why.")
    cursor: str | None = strawberry.field(
        description="Pass as `after` to go on with the next jobs; null when none are left."
    )

    @classmethod
    def of(cls, outcome: BulkOutcome, cursor: str | None) -> CancelJobsResult:
        return cls(
            examined=outcome.examined,
            cancelled_count=len(outcome.done),
            cancelled=[strawberry.ID(job_id) for job_id in outcome.done],
            skipped_count=len(outcome.skipped),
            skipped=[SkippedJob.of(s) for s in outcome.skipped],
            cursor=cursor,
        )


@strawberry.type(description="A task message a worker could not run, set aside.")
class DeadLetter:
    id: strawberry.ID = strawberry.field(
        description="Its id, the same on every read while it is kept."
    )
    queue: str = strawberry.field(description="The queue it came from.")
    reason: str = strawberry.field(description="Why the worker set it aside.")
    at: datetime = strawberry.field(description="When it was set aside.")
    size: int = strawberry.field(description="The message's size in bytes.")
    job_id: strawberry.ID | None = strawberry.field(
        description="The job the message names, when it names one."
    )
    task: str | None = strawberry.field(description="The task it names, when it names one.")
    owner: str | None = strawberry.field(
        description="The owner its message names; null when none (then only admins see it)."
    )
    raw: str = strawberry.field(description="The message as kept (its first 64 KiB).")
    requeueable: bool = strawberry.field(
        description="`requeueDeadLetter` can put it back: a worker can read it."
    )
    unreadable: str | None = strawberry.field(
        description="Why it cannot be requeued; null when it can."
    )

    @classmethod
    def of(cls, entry: DeadLetterEntry) -> DeadLetter:
        return cls(
            id=strawberry.ID(entry.id),
            queue=entry.queue,
            reason=entry.reason,
            at=datetime.fromtimestamp(entry.at, UTC),
            size=entry.size,
            job_id=strawberry.ID(entry.job_id) if entry.job_id else None,
            task=entry.task,
            owner=entry.owner,
            raw=entry.raw,
            requeueable=entry.message is not None,
            unreadable=entry.unreadable or None,
        )


@strawberry.type(description="A page of dead letters, newest first.")
class DeadLetterConnection:
    nodes: list[DeadLetter] = strawberry.field(description="The page's entries.")
    has_next_page: bool = strawberry.field(description="More entries follow this page.")
    end_cursor: str | None = strawberry.field(
        description="Pass as `after` for the next page; null on an empty page."
    )


@strawberry.type(description="A dead letter put back to run.")
class DeadLetterRequeued:
    dead_letter: DeadLetter = strawberry.field(description="The entry, now off the list.")
    job_id: strawberry.ID = strawberry.field(description="The job that will run.")
    queue: str = strawberry.field(description="The queue it was put on.")
    retry_of: strawberry.ID | None = strawberry.field(
        description="When the message's job had failed for being set aside, that job: "
        "`jobId` is then its retry, since a finished job never runs again."
    )

    @classmethod
    def of(cls, requeued: Requeued) -> DeadLetterRequeued:
        return cls(
            dead_letter=DeadLetter.of(requeued.entry),
            job_id=strawberry.ID(requeued.job_id),
            queue=requeued.queue,
            retry_of=strawberry.ID(requeued.retry_of) if requeued.retry_of else None,
        )
