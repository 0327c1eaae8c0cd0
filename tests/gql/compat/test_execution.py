"""Subscription events and objects served by the compiled projection read exactly as
graphql-core's own.

Each case runs the same operation through two schemas that differ only in their executor,
JobQL's and Strawberry's stock one, and compares what a client would receive.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.extensions import FieldExtension, ParserCache
from strawberry.permission import BasePermission
from strawberry.scalars import JSON

from gql.compat import register as compat
from gql.compat.execution import JobQLExecutor, LeakFreeExecutor
from gql.compat.register import StockExecutionContext


@strawberry.enum
class Phase(Enum):
    WAITING = "waiting"
    RUNNING = "running"


@strawberry.type
class Step:
    current: float
    note: str | None


class Nobody(BasePermission):
    message = "not for you"

    def has_permission(self, source: Any, info: strawberry.Info, **kwargs: Any) -> bool:
        return False


class Shout(FieldExtension):
    """Changes the value, and needs the ``info`` a projection does not have."""

    def resolve(self, next_: Any, source: Any, info: strawberry.Info, **kwargs: Any) -> Any:
        return f"{next_(source, info, **kwargs).upper()} at {info.field_name}"


@strawberry.type
class Item:
    id: strawberry.ID
    phase: Phase
    at: datetime
    data: JSON | None
    step: Step | None
    label: str
    secret: str | None = strawberry.field(default="s", permission_classes=[Nobody])
    loud: str = strawberry.field(default="hi", extensions=[Shout()])

    @strawberry.field
    def doubled(self, by: int = 2) -> float:
        return (self.step.current if self.step else 0) * by


AT = datetime(2026, 11, 22, 3, 4, 5, tzinfo=UTC)
ITEMS = [
    Item(id=strawberry.ID("a"), phase=Phase.WAITING, at=AT, data=None, step=None, label="x"),
    Item(
        id=strawberry.ID("a"),
        phase=Phase.RUNNING,
        at=AT,
        data={"rows": [1, 2], "ok": True},
        step=Step(current=1.5, note=None),
        label="y",
    ),
]
# A null where the schema promises a value: graphql-core reports it as a field error.
BROKEN = Item(
    id=strawberry.ID("b"),
    phase=Phase.RUNNING,
    at=AT,
    data=None,
    step=None,
    label=None,  # type: ignore[arg-type]
)
# Built per executor class, so each run can see the executors it created.
created: list[StockExecutionContext] = []


@strawberry.type
class Page:
    items: list[Item]

    @strawberry.field
    def count(self) -> int:
        return len(self.items)


@strawberry.type
class Shelf:
    tags: list[str]
    items: list[Item]
    maybe: list[Item | None] | None


@strawberry.type
class Query:
    ping: bool = True

    @strawberry.field
    def shelf(self) -> Shelf:
        return Shelf(tags=["a", "b"], items=list(ITEMS), maybe=[None, ITEMS[0]])

    @strawberry.field
    def items(self, broken: bool = False) -> list[Item]:
        return [*ITEMS, BROKEN] if broken else list(ITEMS)

    @strawberry.field
    async def page(self) -> Page:
        return Page(items=list(ITEMS))


def schema_with(
    executor: type[StockExecutionContext], extensions: list[Any] | None = None
) -> strawberry.Schema:
    class Recording(executor):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def items(self, broken: bool = False, repeat: int = 1) -> AsyncGenerator[Item, None]:
            for _ in range(repeat):
                for item in ITEMS:
                    yield item
            if broken:
                yield BROKEN

    return strawberry.Schema(
        query=Query,
        subscription=Subscription,
        execution_context_class=Recording,
        extensions=extensions or [],
    )


async def stream(
    schema: strawberry.Schema, query: str, variables: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    results = await schema.subscribe(query, variable_values=variables)
    out = []
    async for result in results:  # type: ignore[union-attr]
        errors = [(e.message, e.path) for e in result.errors or []]
        out.append({"data": result.data, "errors": errors})
    return out


# (selection, whether the projection serves it)
SELECTIONS = [
    ("subscription { items { id phase at data label step { current note } } }", True),
    (
        """subscription($withStep: Boolean!, $skipAt: Boolean!) {
         first: items { ...Basics kind: __typename
           ... on Item { step @include(if: $withStep) { __typename current } }
           at @skip(if: $skipAt) }
       }
       fragment Basics on Item { ident: id phase phase2: phase }""",
        True,
    ),
    # A field with a resolver and arguments: the whole selection takes graphql-core's path.
    ("subscription { items { id doubled(by: 3) step { current } } }", False),
]


@pytest.mark.parametrize(("query", "projected"), SELECTIONS)
@pytest.mark.parametrize("variables", [{"withStep": True, "skipAt": False},
                                       {"withStep": False, "skipAt": True}])  # fmt: skip
async def test_events_read_as_graphql_core_would_send_them(
    query: str, projected: bool, variables: dict[str, Any]
) -> None:
    used = variables if "$" in query else None
    created.clear()
    ours = await stream(schema_with(JobQLExecutor), query, used)
    assert [e._event_plan[0].project is not None for e in created] == [projected]
    stock = await stream(schema_with(StockExecutionContext), query, used)
    assert len(ours) == len(ITEMS)
    assert ours == stock


async def test_subscribers_of_one_document_each_get_what_their_variables_select() -> None:
    """A dashboard's thousands of subscriptions send one document (parsed once, cached):
    they share its compiled plan, but where a directive reads the variables each
    subscriber still gets the fields its own variables ask for."""
    ours = schema_with(JobQLExecutor, extensions=[ParserCache])
    stock = schema_with(StockExecutionContext, extensions=[ParserCache])
    plain = "subscription { items { id phase step { current } } }"
    created.clear()
    first, second = await stream(ours, plain), await stream(ours, plain)
    assert first == second == await stream(stock, plain)
    plans = [executor._event_plan[0] for executor in created[:2]]
    assert plans[0] is plans[1]  # compiled once for both
    chosen = SELECTIONS[1][0]
    for variables in ({"withStep": True, "skipAt": False}, {"withStep": False, "skipAt": True}):
        assert await stream(ours, chosen, variables) == await stream(stock, chosen, variables)


async def test_a_null_in_a_non_null_field_is_the_same_error() -> None:
    query = "subscription { items(broken: true) { id label } }"
    ours = await stream(schema_with(JobQLExecutor), query)
    stock = await stream(schema_with(StockExecutionContext), query)
    assert ours == stock
    assert ours[-1]["data"] is None
    assert ours[-1]["errors"][0][1] == ["items", "label"]


@pytest.mark.parametrize("executor", [JobQLExecutor, LeakFreeExecutor])
async def test_a_long_subscription_keeps_no_memo_per_event(
    executor: type[StockExecutionContext],
) -> None:
    """graphql-core memoizes per event in a dict shared by the subscription's events: the
    fix holds with the speed-up off too."""
    query = "subscription { items(repeat: 200) { id doubled step { current } } }"
    created.clear()
    events = await stream(schema_with(executor), query)
    assert len(events) == 400
    assert created, "the executor was not used"
    assert all(len(executor._relevant_sub_fields) <= 2 for executor in created)


@pytest.mark.parametrize("executor", [JobQLExecutor, LeakFreeExecutor])
async def test_an_ended_subscription_is_freed_without_the_cyclic_collector(
    executor: type[StockExecutionContext],
) -> None:
    """Executors used to be reference cycles: long-lived ones then waited for a full
    collection, which pauses every stream."""
    query = "subscription { items(repeat: 3) { id doubled step { current } } }"
    schema = schema_with(executor)
    created.clear()
    gc.disable()
    try:
        events = await stream(schema, query)
        executors = [weakref.ref(executor) for executor in created]
        created.clear()
        assert len(events) == 6
        assert executors
        assert all(ref() is None for ref in executors)
    finally:
        gc.enable()


# Queries and mutations run on graphql-core's own completion: the same answers as stock.
QUERIES = [
    ("{ items { id phase at data label step { current note } } }", True),
    (
        """query($withStep: Boolean!) { all: items { ...Basics kind: __typename
             ... on Item { step @include(if: $withStep) { __typename current } } }
             page { count items { ident: id } } }
           fragment Basics on Item { ident: id phase }""",
        True,
    ),
    ("{ items { id doubled(by: 3) } }", False),
    # Plain attributes guarded by a permission class or changed by a field extension.
    ("{ items { id secret } }", False),
    ("{ items { id loud } }", False),
    # Lists of leaves and of objects, nullable or not, inside a projected object.
    ("{ shelf { tags items { id step { current } } maybe { label } } }", True),
    # A null where the schema promises a value: the same error, path and nulling.
    ("{ items(broken: true) { id label } }", True),
]


async def run(executor: type[StockExecutionContext], query: str) -> dict[str, Any]:
    result = await schema_with(executor).execute(query, {"withStep": True})
    return {"data": result.data, "errors": [(e.message, e.path) for e in result.errors or []]}


@pytest.mark.parametrize(("query", "projected"), QUERIES)
async def test_query_objects_read_as_graphql_core_would_send_them(
    query: str, projected: bool
) -> None:
    assert await run(JobQLExecutor, query) == await run(StockExecutionContext, query)


async def test_a_denying_permission_class_answers_as_strawberry_does() -> None:
    ours = await run(JobQLExecutor, "{ items { id secret } }")
    assert ours == await run(StockExecutionContext, "{ items { id secret } }")
    assert ours["data"]["items"][0] == {"id": "a", "secret": None}
    assert ours["errors"][0] == ("not for you", ["items", 0, "secret"])


async def test_a_field_extension_runs_with_its_info() -> None:
    ours = await run(JobQLExecutor, "{ items { loud } }")
    assert ours == await run(StockExecutionContext, "{ items { loud } }")
    assert ours["data"]["items"][0] == {"loud": "HI at loud"}


async def test_each_fallback_is_counted_and_its_selection_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    query = "subscription { items { counted: id doubled(by: 3) } }"
    before = compat.EXECUTOR.fallbacks
    for _ in range(3):
        await stream(schema_with(JobQLExecutor), query)
    assert compat.EXECUTOR.fallbacks - before == 3 * len(ITEMS), "one per event, every time"
    logged = [r.getMessage() for r in caplog.records if r.name == "gql.compat.execution"]
    assert len(logged) == 1, logged
    assert "`items { counted: id doubled(by: 3) }`" in logged[0]
    assert "Item.doubled is more than a plain attribute" in logged[0]


async def test_a_projected_selection_counts_no_fallback() -> None:
    before = compat.EXECUTOR.fallbacks
    await stream(schema_with(JobQLExecutor), SELECTIONS[0][0])
    assert compat.EXECUTOR.fallbacks == before


def cached_schema(executor: type[StockExecutionContext]) -> strawberry.Schema:
    """A schema that parses a query text once, as the API's does: one document for all."""
    schema = schema_with(executor)
    schema.extensions = (lambda: ParserCache(maxsize=8),)
    return schema


@pytest.mark.parametrize(
    "query",
    [
        "query($on: Boolean!) { items { id step @include(if: $on) { current } } }",
        """query($on: Boolean!) { items { id ...Step } }
           fragment Step on Item { step @skip(if: $on) { current } label }""",
    ],
)
async def test_a_selection_that_variables_change_is_chosen_per_request(query: str) -> None:
    ours, stock = cached_schema(JobQLExecutor), cached_schema(StockExecutionContext)
    for on in (True, False, True):
        mine = await ours.execute(query, {"on": on})
        theirs = await stock.execute(query, {"on": on})
        assert (mine.data, mine.errors) == (theirs.data, theirs.errors)
