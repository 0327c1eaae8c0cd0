"""The schema: the contract's queries and mutations, plus one typed mutation per task."""

# Resolver annotations must stay real objects: typed mutations are built at run time.
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, TypeVar

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.scalars import JSON
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.tools import create_type
from strawberry.types import ExecutionResult
from strawberry.types.field import StrawberryField
from strawberry.types.graphql import OperationType

from gql.compat.execution import execution_context_class
from gql.compat.parser_cache import ReportingParserCache
from gql.ops.operations import OperationObserver
from gql.schema.context import Info
from gql.schema.inputs import InputTypes, mutation_name, to_data
from gql.schema.operator import OperatorQuery, operator_mutations
from gql.schema.schedules import ScheduleQuery, schedule_mutations
from gql.schema.subscriptions import Subscription
from gql.schema.types import (
    SCALARS,
    EnqueueItem,
    EnqueueOptions,
    Job,
    JobConnection,
    JobEdge,
    JobFilter,
    JobId,
    Options,
    Queue,
    TaskInfo,
    Terminate,
    Viewer,
    Worker,
    decode_cursor,
    encode_cursor,
    enqueue_request,
    page_of,
    page_size,
)
from gql.schema.workflows import WorkflowQuery, WorkflowSubscription, workflow_mutations
from gql.services.errors import ErrorCode, OperationRules, classify
from gql.services.health import Health
from gql.services.jobs import EnqueueRequest
from gql.services.trusted import TrustedDocuments
from tasks.core.registry import TaskRegistry, TaskSpec
from tasks.core.scripts import PageQuery
from tasks.core.settings import Settings

T = TypeVar("T")


def _item_request(
    batch: EnqueueOptions | None, own: EnqueueOptions | None, index: int
) -> EnqueueRequest:
    """An item's options: its own where given, else the batch's. A batch idempotency key
    becomes ``<key>:<index>`` per item, so the same batch sent again returns the same jobs."""
    shared, mine = enqueue_request(batch), enqueue_request(own)
    key = mine.idempotency_key
    if key is None and shared.idempotency_key is not None:
        key = f"{shared.idempotency_key}:{index}"
    return EnqueueRequest(
        countdown=_first(mine.countdown, shared.countdown),
        eta=_first(mine.eta, shared.eta),
        expires=_first(mine.expires, shared.expires),
        priority=_first(mine.priority, shared.priority),
        queue=_first(mine.queue, shared.queue),
        idempotency_key=key,
        webhook=_first(mine.webhook, shared.webhook),
    )


def _first(mine: T | None, shared: T | None) -> T | None:
    return mine if mine is not None else shared


@strawberry.type(description="Read jobs, workflows, schedules, tasks, workers and health.")
class Query(WorkflowQuery, ScheduleQuery, OperatorQuery):
    @strawberry.field(
        description="Who you are to the API: a client's first question (the dashboard asks "
        "it to know whether to sign in and what to show)."
    )
    def viewer(self, info: Info) -> Viewer:
        principal = info.context.principal
        return Viewer(owner=info.context.owner, admin=principal.admin)

    @strawberry.field(description="A job by id; null when unknown or not yours.")
    async def job(self, info: Info, id: JobId) -> Job | None:
        snapshot = await info.context.jobs.get(str(id), info.context.scope)
        return Job.from_snapshot(snapshot) if snapshot else None

    @strawberry.field(description="Your jobs, newest first, one Redis round trip per page.")
    async def jobs(
        self,
        info: Info,
        first: Annotated[
            int | None, strawberry.argument(description="How many jobs, at most the page size.")
        ] = 20,
        after: Annotated[
            str | None, strawberry.argument(description="A cursor: the jobs after that one.")
        ] = None,
        filter: Annotated[
            JobFilter | None, strawberry.argument(description="Only the jobs that match.")
        ] = None,
    ) -> JobConnection:
        jobs = info.context.jobs
        first = page_size(first, jobs.settings.max_page_size)
        scope = info.context.scope
        query = PageQuery(
            owner=info.context.owner if scope is None else scope,
            limit=first + 1,
            after=decode_cursor(after) if after else None,
            states=frozenset(filter.states or ()) if filter else frozenset(),
            task=filter.task if filter else None,
            created_after=filter.created_after if filter else None,
            created_before=filter.created_before if filter else None,
        )
        snapshots = await jobs.page(query, every_owner=scope is None) if first else []
        edges = [JobEdge(cursor=encode_cursor(s), node=Job.from_snapshot(s)) for s in snapshots]
        page, page_info = page_of(edges, first, after)
        return JobConnection(edges=page, page_info=page_info)

    @strawberry.field(description="Every task that can be enqueued, with its input's JSON Schema.")
    def tasks(self, info: Info) -> list[TaskInfo]:
        jobs = info.context.jobs
        return [
            TaskInfo.from_spec(
                spec, jobs.settings.default_queue, mutation_name(spec.name) if spec.typed else None
            )
            for spec in jobs.registry.all()
        ]

    @strawberry.field(description="Broker, result backend, broadcast and workers, checked now.")
    async def health(self, info: Info) -> Health:
        return await info.context.health.report()

    @strawberry.field(
        description="Live workers from their heartbeats; refreshed every few seconds at most."
    )
    async def workers(self, info: Info) -> list[Worker]:
        return [Worker.from_beat(beat) for beat in await info.context.health.workers()]

    @strawberry.field(
        description="Every known queue: jobs waiting in the broker and the live workers "
        "consuming it; refreshed every few seconds at most."
    )
    async def queues(self, info: Info) -> list[Queue]:
        return [Queue.from_state(q) for q in await info.context.health.queues()]


async def enqueue(
    info: Info,
    task: Annotated[
        str, strawberry.argument(description='A registered task name, e.g. "generate_report".')
    ],
    input: Annotated[
        JSON, strawberry.argument(description="The task's input, camelCase keys.")
    ] = JSON({}),  # noqa: B008
    options: Options = None,
) -> Job:
    jobs, owner = info.context.jobs, await info.context.admitted()
    snapshot = await jobs.enqueue(jobs.spec(task), input, enqueue_request(options), owner)
    return Job.from_snapshot(snapshot)


async def enqueue_many(
    info: Info,
    items: Annotated[
        list[EnqueueItem], strawberry.argument(description="The jobs, each a task and its input.")
    ],
    options: Annotated[
        EnqueueOptions | None,
        strawberry.argument(description="Options for every item that does not give its own."),
    ] = None,
) -> list[Job]:
    batch = [
        (item.task, item.input, _item_request(options, item.options, i))
        for i, item in enumerate(items)
    ]
    snapshots = await info.context.jobs.enqueue_many(batch, await info.context.admitted())
    return [Job.from_snapshot(s) for s in snapshots]


async def cancel_job(info: Info, id: JobId, terminate: Terminate = False) -> Job:
    await info.context.admitted()
    snapshot = await info.context.jobs.cancel(
        str(id), info.context.scope, terminate=bool(terminate)
    )
    return Job.from_snapshot(snapshot)


async def retry_job(info: Info, id: JobId) -> Job:
    await info.context.admitted()
    snapshot = await info.context.jobs.retry(str(id), info.context.scope)
    return Job.from_snapshot(snapshot)


def _typed_mutation(spec: TaskSpec, input_types: InputTypes) -> StrawberryField:
    assert spec.input_model is not None
    input_type = input_types.for_model(spec.input_model)

    async def resolver(info: Info, input: Any, options: EnqueueOptions | None = None) -> Job:
        snapshot = await info.context.jobs.enqueue(
            spec, to_data(input), enqueue_request(options), await info.context.admitted()
        )
        return Job.from_snapshot(snapshot)

    resolver.__annotations__ = {
        "info": Info,
        "input": Annotated[
            input_type, strawberry.argument(description=f"The input of `{spec.name}`.")
        ],
        "options": Options,
        "return": Job,
    }
    resolver.__name__ = mutation_name(spec.name)
    description = f"Enqueue `{spec.name}`. {spec.description}".strip()
    return strawberry.mutation(resolver, name=mutation_name(spec.name), description=description)


def _typed_batch_mutation(spec: TaskSpec, input_types: InputTypes) -> StrawberryField:
    assert spec.input_model is not None
    input_type = input_types.for_model(spec.input_model)

    async def resolver(info: Info, inputs: Any, options: EnqueueOptions | None = None) -> Any:
        batch = [
            (spec, to_data(item), _item_request(options, None, i)) for i, item in enumerate(inputs)
        ]
        owner = await info.context.admitted()
        snapshots = await info.context.jobs.enqueue_many(batch, owner, path="inputs")
        return [Job.from_snapshot(s) for s in snapshots]

    name = mutation_name(spec.name) + "Many"
    resolver.__annotations__ = {
        "info": Info,
        "inputs": Annotated[
            list[input_type],  # type: ignore[valid-type]
            strawberry.argument(description="One input per job, in order."),
        ],
        "options": Annotated[
            EnqueueOptions | None,
            strawberry.argument(description="Options for every job of the batch."),
        ],
        "return": list[Job],
    }
    resolver.__name__ = name
    description = (
        f"Enqueue `{spec.name}` once per input, all or none; a batch idempotency key "
        "becomes `<key>:<index>` per job."
    )
    return strawberry.mutation(resolver, name=name, description=description)


@strawberry.type(
    name="Subscription",
    description="Watch jobs and workflows live: the state now, then every change.",
)
class RootSubscription(Subscription, WorkflowSubscription):
    pass


def _needs_a_stream() -> GraphQLError:
    return GraphQLError(
        "A subscription needs a streaming transport: a WebSocket (graphql-transport-ws or "
        "graphql-ws), or a POST accepting multipart/mixed or text/event-stream.",
        extensions={"code": ErrorCode.BAD_REQUEST.value},
    )


class JobQLSchema(strawberry.Schema):
    """Every error gets its code here, once, before masking and before it is sent."""

    def process_errors(self, errors: list[Any], execution_context: Any = None) -> None:
        for error in errors:
            classify(error)

    async def execute(
        self,
        query: str | None,
        variable_values: dict[str, Any] | None = None,
        context_value: Any | None = None,
        root_value: Any | None = None,
        operation_name: str | None = None,
        allowed_operation_types: Iterable[OperationType] | None = None,
        operation_extensions: dict[str, Any] | None = None,
    ) -> ExecutionResult:
        """One result per request: a subscription is refused here, before it runs.

        Strawberry 0.341.2 lets a subscription sent as a plain POST (or GET) through to
        ``execute``, which completes the generator as if it were a job: a traceback in the
        log and ``INTERNAL_SERVER_ERROR`` (found by ``tests/faults/test_fuzz.py``). It is the
        client's error, answered as a request error without ``data``, as the GraphQL-over-
        HTTP reference server (graphql-http) answers it: 200 under ``application/json``,
        400 under ``application/graphql-response+json`` (``gql.http.responses``). Not 405:
        POST is the right method, it is the response's media type that cannot stream.
        """
        given = allowed_operation_types
        allowed = {OperationType.QUERY, OperationType.MUTATION} if given is None else set(given)
        allowed.discard(OperationType.SUBSCRIPTION)
        try:
            return await super().execute(
                query,
                variable_values,
                context_value,
                root_value,
                operation_name,
                allowed,
                operation_extensions,
            )
        except InvalidOperationTypeError as exc:
            if exc.operation_type is not OperationType.SUBSCRIPTION:
                raise
            return ExecutionResult(data=None, errors=[_needs_a_stream()])


def operation_rules(
    settings: Settings | None, trusted: TrustedDocuments | None = None
) -> Callable[[], OperationRules]:
    """Input errors tagged, and the depth, alias and token limits when settings are given.

    Strawberry's limiters build the rules once; :class:`gql.services.errors.OperationRules`
    applies them in its one hook, a fresh extension per operation. It comes before the caches:
    a cached parse or validation was made under the same rules. With ``trusted``, an operation
    not in the trusted documents is refused at validation.
    """
    if settings is None:
        return OperationRules
    depth = QueryDepthLimiter(max_depth=settings.max_query_depth).validation_rules
    aliases = MaxAliasesLimiter(max_alias_count=settings.max_aliases).validation_rules
    return functools.partial(OperationRules, settings.max_tokens, [*depth, *aliases], trusted)


def build_schema(
    registry: TaskRegistry,
    settings: Settings | None = None,
    mutations: Sequence[StrawberryField] = (),
    trusted: TrustedDocuments | None = None,
) -> strawberry.Schema:
    """The schema for the typed tasks of ``registry`` (import the task modules first), with
    the abuse limits of ``settings`` when given, on JobQL's executor once
    :func:`gql.compat.register.enable` turned it on, else on Strawberry's. ``mutations``: a host
    application's own (a Django app's, which may write models and start jobs at once);
    ``trusted``: the only operations that may run (:mod:`gql.services.trusted`)."""
    input_types = InputTypes()
    mutation_fields = [
        strawberry.mutation(enqueue, name="enqueue", description="Enqueue any task by name."),
        strawberry.mutation(
            enqueue_many,
            name="enqueueMany",
            description="Enqueue several jobs at once: every item is validated first, then all "
            "are recorded in one Redis call, or none is. Errors name the item's index.",
        ),
        *(_typed_mutation(spec, input_types) for spec in registry.typed),
        *(_typed_batch_mutation(spec, input_types) for spec in registry.typed),
        strawberry.mutation(
            cancel_job,
            name="cancelJob",
            description="Revoke a job: a waiting one never runs; a running one stops with "
            "terminate: true.",
        ),
        strawberry.mutation(
            retry_job,
            name="retryJob",
            description="A new job with the same task and input; a job is retried once (asked "
            "again, the answer is its retry).",
        ),
        *operator_mutations(),
        *workflow_mutations(),
        *schedule_mutations(),
        *mutations,
    ]
    mutation = create_type(
        "Mutation",
        mutation_fields,
        description="Start, cancel and retry jobs and workflows; schedule periodic jobs; "
        "operate queues and dead letters.",
    )
    return JobQLSchema(
        query=Query,
        mutation=mutation,
        subscription=RootSubscription,
        config=StrawberryConfig(
            auto_camel_case=True,
            scalar_map=SCALARS,
            # Strawberry's own batching; gql.http.view checks each batch's size first.
            batching_config=(
                {"max_operations": settings.max_operations_per_batch}
                if settings and settings.max_operations_per_batch
                else None
            ),
        ),
        execution_context_class=execution_context_class(),
        # Classes and factories: Strawberry builds a fresh extension per operation, so none
        # shares per-request state with another; the caches' LRUs are Strawberry's own,
        # shared by every instance of the same size.
        extensions=[
            operation_rules(settings, trusted),
            *([DisableIntrospection] if settings and not settings.introspection else []),
            OperationObserver,  # its timing is per operation
            lambda: ReportingParserCache(maxsize=1024),
            lambda: ValidationCache(maxsize=1024),
        ],
    )
