"""Subscription events served by the compiled projection read exactly as graphql-core's own.

Each case streams the same events through two schemas that differ only in their executor,
JobQL's and Strawberry's stock one, and compares what a client would receive.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest
import strawberry
from strawberry.scalars import JSON
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from gql.execution import JobQLExecutor


@strawberry.enum
class Phase(Enum):
    WAITING = "waiting"
    RUNNING = "running"


@strawberry.type
class Step:
    current: float
    note: str | None


@strawberry.type
class Item:
    id: strawberry.ID
    phase: Phase
    at: datetime
    data: JSON | None
    step: Step | None
    label: str

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
created: list[StrawberryGraphQLCoreExecutionContext] = []


@strawberry.type
class Page:
    items: list[Item]

    @strawberry.field
    def count(self) -> int:
        return len(self.items)


@strawberry.type
class Query:
    ping: bool = True

    @strawberry.field
    def items(self, broken: bool = False) -> list[Item]:
        return [*ITEMS, BROKEN] if broken else list(ITEMS)

    @strawberry.field
    async def page(self) -> Page:
        return Page(items=list(ITEMS))


def schema_with(executor: type[StrawberryGraphQLCoreExecutionContext]) -> strawberry.Schema:
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
        query=Query, subscription=Subscription, execution_context_class=Recording
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
def test_events_read_as_graphql_core_would_send_them(
    query: str, projected: bool, variables: dict[str, Any]
) -> None:
    used = variables if "$" in query else None
    created.clear()
    ours = asyncio.run(stream(schema_with(JobQLExecutor), query, used))
    assert [executor._event_plan[0] is not None for executor in created] == [projected]
    stock = asyncio.run(stream(schema_with(StrawberryGraphQLCoreExecutionContext), query, used))
    assert len(ours) == len(ITEMS)
    assert ours == stock


def test_a_null_in_a_non_null_field_is_the_same_error() -> None:
    query = "subscription { items(broken: true) { id label } }"
    ours = asyncio.run(stream(schema_with(JobQLExecutor), query))
    stock = asyncio.run(stream(schema_with(StrawberryGraphQLCoreExecutionContext), query))
    assert ours == stock
    assert ours[-1]["data"] is None
    assert ours[-1]["errors"][0][1] == ["items", "label"]


def test_a_long_subscription_keeps_no_memo_per_event() -> None:
    """graphql-core memoizes per event in a dict shared by the subscription's events."""
    query = "subscription { items(repeat: 200) { id doubled step { current } } }"
    created.clear()
    events = asyncio.run(stream(schema_with(JobQLExecutor), query))
    assert len(events) == 400
    assert created, "the executor was not used"
    assert all(len(executor._relevant_sub_fields) <= 2 for executor in created)


def test_an_ended_subscription_is_freed_without_the_cyclic_collector() -> None:
    """Executors used to be reference cycles: long-lived ones then waited for a full
    collection, which pauses every stream (~0.5 s at 5,000 subscriptions)."""
    query = "subscription { items(repeat: 3) { id doubled step { current } } }"
    schema = schema_with(JobQLExecutor)
    created.clear()
    gc.disable()
    try:
        events = asyncio.run(stream(schema, query))
        executors = [weakref.ref(executor) for executor in created]
        created.clear()
        assert len(events) == 6
        assert executors
        assert all(ref() is None for ref in executors)
    finally:
        gc.enable()


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
    # A null where the schema promises a value: the same error, path and nulling.
    ("{ items(broken: true) { id label } }", True),
]


@pytest.mark.parametrize(("query", "projected"), QUERIES)
def test_query_objects_read_as_graphql_core_would_send_them(query: str, projected: bool) -> None:
    def run(executor: type[StrawberryGraphQLCoreExecutionContext]) -> dict[str, Any]:
        result = asyncio.run(schema_with(executor).execute(query, {"withStep": True}))
        errors = [(e.message, e.path) for e in result.errors or []]
        return {"data": result.data, "errors": errors}

    created.clear()
    ours = run(JobQLExecutor)
    plans = [plan for executor in created for _, plan in executor._object_plans.values()]
    assert ours == run(StrawberryGraphQLCoreExecutionContext)
    assert any(plan is not None for plan in plans) == projected
