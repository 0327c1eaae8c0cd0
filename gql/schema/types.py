"""The contract's GraphQL types (see ``docs/design.md``), described for GraphiQL and codegen."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, NewType, Protocol, TypeVar

import strawberry
from strawberry.scalars import JSON
from strawberry.types.scalar import ScalarDefinition

from gql.schema.descriptions import describe_values
from gql.schema.webhook_types import WebhookDelivery, WebhookInput
from gql.services.errors import BadUserInput
from gql.services.jobs import EnqueueRequest
from gql.services.webhooks import Webhook, deliveries
from gql.services.workers import QueueState
from tasks.core import timeline
from tasks.core.records import JobSnapshot, to_score
from tasks.core.records import JobState as JobStateValue
from tasks.core.registry import TaskSpec
from tasks.core.scripts import PageQuery

JobState = strawberry.enum(
    JobStateValue,
    name="JobState",
    description="Where a job is in its life. SUCCESS, FAILURE and REVOKED are final.",
)


describe_values(
    JobState,
    {
        "PENDING": "Enqueued, waiting for a worker.",
        "STARTED": "A worker is running it.",
        "PROGRESS": "Running, and it reported progress.",
        "RETRY": "It failed and will be tried again.",
        "SUCCESS": "Finished; `result` holds its return value.",
        "FAILURE": "Failed for good; `error` says why.",
        "REVOKED": "Cancelled before or while it ran.",
    },
)

# A task input's email field: a plain str in Python, the ``Email`` scalar in the schema (through
# the schema's ``scalar_map``, as Strawberry asks since it deprecated wrapping a type).
Email = NewType("Email", str)
SCALARS: dict[object, ScalarDefinition] = {
    Email: strawberry.scalar(
        name="Email",
        description="An email address (RFC 5322 syntax).",
        serialize=str,
        parse_value=str,
    )
}


@strawberry.type(description="How far a running job has got.")
class Progress:
    current: float = strawberry.field(description="Work done so far, in the task's own units.")
    total: float | None = strawberry.field(description="Work in all, when the task knows it.")
    percent: float | None = strawberry.field(description="current / total, 0..100.")
    message: str | None = strawberry.field(description="What the task is doing now.")
    data: JSON | None = strawberry.field(description="Anything else the task reported.")

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Progress:
        return cls(
            current=float(value.get("current") or 0),
            total=value.get("total"),
            percent=value.get("percent"),
            message=value.get("message"),
            data=value.get("data"),
        )


@strawberry.type(description="Why a job failed or was revoked.")
class JobError:
    type: str = strawberry.field(description="The exception's type, e.g. ValueError, Revoked.")
    message: str = strawberry.field(description="The exception's message.")


@strawberry.enum(description="How much a log line matters, as Python's `logging` levels.")
class LogLevel(Enum):
    DEBUG = strawberry.enum_value("DEBUG", description="Detail for debugging.")
    INFO = strawberry.enum_value("INFO", description="What the task is doing.")
    WARNING = strawberry.enum_value("WARNING", description="Something unexpected; it goes on.")
    ERROR = strawberry.enum_value("ERROR", description="Something failed.")
    CRITICAL = strawberry.enum_value("CRITICAL", description="A failure it cannot go on after.")

    @classmethod
    def of(cls, number: int) -> LogLevel:
        """The level of a ``logging`` number (one between two levels counts as the lower)."""
        for level in (cls.CRITICAL, cls.ERROR, cls.WARNING, cls.INFO):
            if number >= timeline.LEVELS[level.value.lower()]:
                return level
        return cls.DEBUG


@strawberry.type(
    description="One entry of a job's timeline: a change of its state, or its consecutive "
    "progress reports merged into one."
)
class JobEvent:
    at: datetime = strawberry.field(
        description="When it happened (UTC), by the clock of the process that recorded it; "
        "for merged progress reports, the latest one's time."
    )
    state: JobState = strawberry.field(  # type: ignore[valid-type]
        description="The state the job moved to."
    )
    attempt: int = strawberry.field(
        description="Which run of the job it belongs to: `attempts` at that time, 0 before "
        "a worker first started it."
    )
    worker: str | None = strawberry.field(
        description="The worker running the job then; null before one started it."
    )
    message: str | None = strawberry.field(
        description="The error or message where there is one: a retry's or the final "
        "error, the latest progress message, why the job was run again."
    )
    count: int = strawberry.field(
        description="How many progress reports this entry stands for; 1 for any other entry."
    )

    @classmethod
    def from_entry(cls, entry: timeline.Entry) -> JobEvent:
        return cls(
            at=entry.at,
            state=entry.state,
            attempt=entry.attempt,
            worker=entry.worker,
            message=entry.message,
            count=entry.count,
        )


@strawberry.type(description="A line the job's task logged (`JobContext.log`).")
class JobLogLine:
    at: datetime = strawberry.field(description="When it was logged (UTC), by the worker's clock.")
    level: LogLevel = strawberry.field(description="How much it matters.")
    message: str = strawberry.field(description="The line, at most 1,000 characters.")


@strawberry.type(description="One background job: a Celery task run with its input.")
class Job:
    id: strawberry.ID = strawberry.field(description="The Celery task id.")
    task: str = strawberry.field(description='Registered task name, e.g. "generate_report".')
    owner: str = strawberry.field(
        description="Who owns the job: the caller, or for an admin, any owner."
    )
    state: JobState = strawberry.field(description="Current state.")  # type: ignore[valid-type]
    done: bool = strawberry.field(description="True once SUCCESS, FAILURE or REVOKED.")
    sequence: int = strawberry.field(description="Grows by one with every change of this job.")
    progress: Progress | None = strawberry.field(description="Latest progress report.")
    result: JSON | None = strawberry.field(description="The task's return value, on SUCCESS.")
    error: JobError | None = strawberry.field(description="Set on FAILURE and REVOKED.")
    input: JSON | None = strawberry.field(description="The validated input, as camelCase JSON.")
    retries: int = strawberry.field(description="How many times the task was retried.")
    queue: str = strawberry.field(description="The queue the job was sent to.")
    created_at: datetime = strawberry.field(description="When the job was enqueued (UTC).")
    started_at: datetime | None = strawberry.field(description="When a worker first started it.")
    finished_at: datetime | None = strawberry.field(description="When it reached a final state.")
    workflow_id: strawberry.ID | None = strawberry.field(
        default=None, description="The workflow this job is a step of, if any."
    )
    attempts: int = strawberry.field(
        default=0,
        description="How many times a worker started the job: a retry or a re-delivery "
        "after a lost worker counts one more.",
    )
    redelivery: str | None = strawberry.field(
        default=None,
        description="Why the job was last delivered again to a worker (e.g. its worker was "
        "lost); null when it never was.",
    )
    worker: str | None = strawberry.field(
        default=None, description="The worker that started the job last."
    )
    trace_id: str | None = strawberry.field(
        default=None,
        description="The OpenTelemetry trace the job was enqueued in (32 hex digits), which "
        "holds its publish, its runs on workers and its webhook deliveries; null unless the "
        "server traces (JOBQL_OPENTELEMETRY).",
    )
    schedule: str | None = strawberry.field(
        default=None, description="The name of the periodic schedule this job is a run of."
    )
    schedule_id: strawberry.ID | None = strawberry.field(
        default=None, description="That schedule's id (`schedule(id)`)."
    )
    logs_dropped: int = strawberry.field(
        default=0,
        description="How many of the job's log lines were dropped, oldest first, to keep "
        f"the newest {timeline.LOG_LINES_KEPT}.",
    )
    # The record's timeline as stored, read only if `events` is asked for.
    stored_events: strawberry.Private[str] = ""

    @strawberry.field(
        description="What happened to the job, oldest first: every change of its state with "
        "its time, attempt, worker and error or message (queued, started, retried, run "
        "again after a lost worker, finished), consecutive progress reports merged into one "
        f"entry. The newest {timeline.EVENTS_KEPT} entries; streamed with the job."
    )
    def events(self) -> list[JobEvent]:
        error = {"type": self.error.type, "message": self.error.message} if self.error else None
        entries = timeline.entries(self.stored_events, self.worker, error)
        return [JobEvent.from_entry(entry) for entry in entries]

    @strawberry.field(
        description="The lines the job's task logged (`JobContext.log`), oldest first: the "
        f"newest {timeline.LOG_LINES_KEPT} at most. Streamed live on the `job(id)` "
        "subscription."
    )
    async def logs(
        self,
        info: strawberry.Info,
        last: Annotated[
            int | None, strawberry.argument(description="Only the newest this many lines.")
        ] = None,
    ) -> list[JobLogLine]:
        if last is not None and last < 0:
            raise BadUserInput.field("last", "must be 0 or more")
        context = info.context
        lines = await context.jobs.logs(str(self.id), self.owner, context.scope, last)
        return [
            JobLogLine(at=line.at, level=LogLevel.of(line.level), message=line.message)
            for line in lines
        ]

    @strawberry.field(description="Every attempt to deliver this job's webhook, oldest first.")
    async def webhook_deliveries(self, info: strawberry.Info) -> list[WebhookDelivery]:
        entries = await deliveries(info.context.jobs.store.client, "job", str(self.id))
        return [WebhookDelivery.from_log(entry) for entry in entries]

    @classmethod
    def from_snapshot(cls, snapshot: JobSnapshot) -> Job:
        error = snapshot.error
        return cls(
            id=strawberry.ID(snapshot.id),
            task=snapshot.task,
            owner=snapshot.owner,
            state=snapshot.state,
            done=snapshot.done,
            sequence=snapshot.sequence,
            progress=Progress.from_dict(snapshot.progress) if snapshot.progress else None,
            result=snapshot.result,
            error=JobError(type=error["type"], message=error["message"]) if error else None,
            input=snapshot.input,
            retries=snapshot.retries,
            queue=snapshot.queue,
            created_at=snapshot.created_at,
            started_at=snapshot.started_at,
            finished_at=snapshot.finished_at,
            workflow_id=strawberry.ID(snapshot.workflow_id) if snapshot.workflow_id else None,
            attempts=snapshot.attempts,
            redelivery=snapshot.redelivery,
            worker=snapshot.worker,
            trace_id=snapshot.trace_id,
            schedule=snapshot.schedule,
            schedule_id=strawberry.ID(snapshot.schedule_id) if snapshot.schedule_id else None,
            logs_dropped=snapshot.logs_dropped,
            stored_events=snapshot.events,
        )


@strawberry.type(description="An edge of a job connection.")
class JobEdge:
    cursor: str = strawberry.field(description="Pass as `after` to read the jobs after this one.")
    node: Job = strawberry.field(description="The job.")


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More jobs follow this page.")
    has_previous_page: bool = strawberry.field(description="This page was read with `after`.")
    start_cursor: str | None = strawberry.field(description="The first edge's cursor.")
    end_cursor: str | None = strawberry.field(
        description="The last edge's cursor: pass it as `after` for the next page."
    )


class HasCursor(Protocol):
    cursor: str


Edge = TypeVar("Edge", bound=HasCursor)


def page_size(first: int | None, largest: int) -> int:
    """A connection's ``first``: 20 when unset, refused outside 0..``largest``."""
    first = 20 if first is None else first
    if not 0 <= first <= largest:
        raise BadUserInput.field("first", f"must be 0..{largest}")
    return first


def page_of(edges: list[Edge], first: int, after: str | None) -> tuple[list[Edge], PageInfo]:
    """The page of ``edges`` (read one past ``first`` to know whether more follow)."""
    page = edges[:first]
    return page, PageInfo(
        has_next_page=len(edges) > first,
        has_previous_page=after is not None,
        start_cursor=page[0].cursor if page else None,
        end_cursor=page[-1].cursor if page else None,
    )


@strawberry.type(description="A page of jobs, newest first (Relay connection).")
class JobConnection:
    edges: list[JobEdge] = strawberry.field(description="The page's jobs with their cursors.")
    page_info: PageInfo = strawberry.field(description="Where this page is in the list.")

    @strawberry.field(description="The page's jobs without their edges.")
    def nodes(self) -> list[Job]:
        return [edge.node for edge in self.edges]


def encode_cursor(snapshot: JobSnapshot) -> str:
    return cursor_of(to_score(snapshot.created_at), snapshot.id)


def cursor_of(score: int, name: str) -> str:
    """A Relay cursor: an entry's score in its index and its id, as ``decode_cursor`` reads."""
    return base64.urlsafe_b64encode(f"{score}:{name}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        score, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        return int(score), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadUserInput.field("after", "not a cursor this API gave out") from None


@strawberry.type(description="Limits a task runs under.")
class TaskLimits:
    soft_time_limit: float | None = strawberry.field(description="Seconds before SoftTimeLimit.")
    time_limit: float | None = strawberry.field(description="Seconds before the run is killed.")
    max_retries: int | None = strawberry.field(description="Retries before it fails for good.")
    rate_limit: str | None = strawberry.field(description='Celery rate limit, e.g. "10/m".')


@strawberry.type(description="A task that can be enqueued.")
class TaskInfo:
    name: str = strawberry.field(description='The name `enqueue` takes, e.g. "generate_report".')
    description: str = strawberry.field(description="What the task does.")
    typed: bool = strawberry.field(description="Whether it has its own typed mutation.")
    mutation: str | None = strawberry.field(description="Name of that typed mutation.")
    input_schema: JSON = strawberry.field(description="JSON Schema of `input`.")
    output_schema: JSON | None = strawberry.field(description="JSON Schema of `result`.")
    queue: str = strawberry.field(description="The queue its jobs go to unless told otherwise.")
    limits: TaskLimits = strawberry.field(description="Time, retry and rate limits.")

    @classmethod
    def from_spec(cls, spec: TaskSpec, default_queue: str, mutation: str | None) -> TaskInfo:
        return cls(
            name=spec.name,
            description=spec.description,
            typed=spec.typed,
            mutation=mutation,
            input_schema=JSON(spec.input_schema()),
            output_schema=JSON(output) if (output := spec.output_schema()) else None,
            queue=spec.queue or default_queue,
            limits=TaskLimits(
                soft_time_limit=spec.soft_time_limit,
                time_limit=spec.time_limit,
                max_retries=spec.max_retries,
                rate_limit=spec.rate_limit,
            ),
        )


@strawberry.type(description="Who is asking: what a client shows before anything else.")
class Viewer:
    owner: str = strawberry.field(description="The owner of the jobs you create.")
    admin: bool = strawberry.field(
        description="True when you see and act on every owner's jobs and may pause queues."
    )


@strawberry.type(description="A Celery worker, as its last heartbeat (every few seconds) says.")
class Worker:
    name: str = strawberry.field(description="Celery's node name, e.g. celery@host.")
    status: str = strawberry.field(description="online, or stopping during a warm shutdown.")
    pid: int = strawberry.field(description="The worker's main process id.")
    pool: str = strawberry.field(description="prefork, threads, solo...")
    concurrency: int = strawberry.field(description="Jobs it can run at once.")
    queues: list[str] = strawberry.field(description="The queues it consumes now.")
    active: int = strawberry.field(description="Jobs running now.")
    reserved: int = strawberry.field(description="Jobs received, waiting for a pool slot.")
    processed: int = strawberry.field(description="Jobs it ran since it started.")
    last_heartbeat: datetime = strawberry.field(description="When it last reported (UTC).")
    started_at: datetime = strawberry.field(description="When it started (UTC).")

    @classmethod
    def from_beat(cls, beat: Any) -> Worker:
        return cls(
            name=beat["name"],
            status=beat["status"],
            pid=beat["pid"],
            pool=beat["pool"],
            concurrency=beat["concurrency"],
            queues=list(beat["queues"]),
            active=beat["active"],
            reserved=beat["reserved"],
            processed=beat["processed"],
            last_heartbeat=datetime.fromisoformat(beat["heartbeat"]),
            started_at=datetime.fromisoformat(beat["started_at"]),
        )


@strawberry.type(description="A queue jobs can be sent to.")
class Queue:
    name: str = strawberry.field(description="The queue's name, as `EnqueueOptions.queue` takes.")
    pending: int = strawberry.field(description="Messages waiting in the broker for a worker.")
    consumers: int = strawberry.field(description="Live workers consuming it.")
    workers: list[str] = strawberry.field(description="Their names.")
    paused: bool = strawberry.field(
        default=False,
        description="Paused by `pauseQueue`: its jobs wait until `resumeQueue`.",
    )
    paused_since: datetime | None = strawberry.field(
        default=None, description="When it was paused; null when it is not."
    )
    paused_by: str | None = strawberry.field(
        default=None, description="The admin who paused it; null when it is not paused."
    )

    @classmethod
    def from_state(cls, state: QueueState) -> Queue:
        pause = state.paused or {}
        since = pause.get("since")
        return cls(
            name=state.name,
            pending=state.pending,
            consumers=len(state.workers),
            workers=list(state.workers),
            paused=state.paused is not None,
            paused_since=datetime.fromisoformat(since) if since else None,
            paused_by=pause.get("by"),
        )


@strawberry.input(description="How and when to run a job (Celery's apply_async options).")
class EnqueueOptions:
    countdown: float | None = strawberry.field(default=None, description="Seconds to wait first.")
    eta: datetime | None = strawberry.field(default=None, description="Run no earlier than this.")
    expires: datetime | None = strawberry.field(
        default=None, description="Revoke if not started by then."
    )
    priority: int | None = strawberry.field(default=None, description="0 (first) to 9.")
    queue: str | None = strawberry.field(default=None, description="Queue to send it to.")
    idempotency_key: str | None = strawberry.field(
        default=None,
        description="The same key within the retention window returns the same job.",
    )
    webhook: WebhookInput | None = strawberry.field(
        default=None, description="POST the job (or workflow) here when it reaches an event."
    )


@strawberry.input(description="One job of an `enqueueMany` batch.")
class EnqueueItem:
    task: str = strawberry.field(description="A registered task name; `tasks` lists them.")
    input: JSON = strawberry.field(
        default_factory=dict, description="The task's input, camelCase keys."
    )
    options: EnqueueOptions | None = strawberry.field(
        default=None, description="This item's options; each one given overrides the batch's."
    )


# Arguments that several fields take, described once.
JobId = Annotated[strawberry.ID, strawberry.argument(description="The job's id (`Job.id`).")]
Options = Annotated[
    EnqueueOptions | None,
    strawberry.argument(description="When, where and how to run it; defaults when omitted."),
]
Terminate = Annotated[
    bool | None,
    strawberry.argument(description="Also stop it if it is running (SIGTERM to the worker)."),
]


@strawberry.input(description="Which jobs to list or watch.")
class JobFilter:
    states: list[JobState] | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="Only jobs in one of these states."
    )
    task: str | None = strawberry.field(default=None, description="Only jobs of this task.")
    created_after: datetime | None = strawberry.field(
        default=None, description="Only jobs enqueued after this time."
    )
    created_before: datetime | None = strawberry.field(
        default=None, description="Only jobs enqueued before this time."
    )

    def query(self, owner: str, limit: int, after: str | None) -> PageQuery:
        """The page of ``owner``'s jobs this filter selects, ``limit`` of them after ``after``."""
        return PageQuery(
            owner=owner,
            limit=limit,
            after=decode_cursor(after) if after else None,
            states=frozenset(self.states or ()),
            task=self.task,
            created_after=self.created_after,
            created_before=self.created_before,
        )


def enqueue_request(options: EnqueueOptions | None) -> EnqueueRequest:
    """``EnqueueOptions`` as the job service reads them (every field optional)."""
    if options is None:
        return EnqueueRequest()
    hook = options.webhook
    return EnqueueRequest(
        countdown=options.countdown,
        eta=options.eta,
        expires=options.expires,
        priority=options.priority,
        queue=options.queue,
        idempotency_key=options.idempotency_key,
        webhook=Webhook(hook.url, tuple(e.value for e in hook.events)) if hook else None,
    )
