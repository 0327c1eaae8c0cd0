"""The API's touches of library internals, each an entry of :mod:`tasks.core.compat`'s register:
the private names they need are imported here, and :func:`decide_all`, called once by the app
factory, turns each on only where its check finds the internal as it was verified (and, for a
speed-up, where ``JOBQL_FAST_PATHS`` allows), else the stock code runs after one warning. The
classes built on them stay beside the code they serve (:mod:`gql.compat.execution`,
:mod:`gql.http.sockets`, :mod:`gql.compat.packing`); a private module that moved fails the import
at start-up, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import strawberry
from graphql import GraphQLField, build_schema, parse
from graphql.execution.collect_fields import (
    CollectedFields,
    FieldDetails,
    FragmentDetails,
    collect_fields,
    collect_subfields,
)
from strawberry.permission import BasePermission
from strawberry.resolvers import is_default_resolver
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from gql.compat import packing
from tasks.core import compat
from tasks.core.settings import Settings

__all__ = [
    "CollectedFields",
    "FieldDetails",
    "HttpToolsProtocol",
    "RequestResponseCycle",
    "StockExecutionContext",
    "WebSocketsSansIOProtocol",
    "collect_fields",
    "collect_subfields",
]

StockExecutionContext = StrawberryGraphQLCoreExecutionContext

GRAPHQL = "graphql-core 3.3.2, strawberry-graphql 0.341.2"
STRAWBERRY = "strawberry-graphql 0.341.2"
UVICORN = "uvicorn 0.54.0"

EXECUTOR_LEAKS = compat.fix(
    "graphql_core.executor_leaks",
    "graphql-core",
    GRAPHQL,
    "Strawberry's stock executor: each executor a reference cycle, each subscription's "
    "sub-field memo growing by an entry or two per event",
    upstream="graphql-core binds its resolver helpers to the executor and memoizes sub-field "
    "collection per subscription on per-event lists (graphql-python/graphql-core#190 is the "
    "garbage-collection cost of such cycles; the memo is not reported yet)",
)
EXECUTOR = compat.speed_up(
    "executor",
    "graphql-core, strawberry-graphql",
    GRAPHQL,
    "graphql-core executes each subscription event's selection set anew",
    figure="P6 / P13: the API's CPU per delivered progress event",
)
BOUNDED_SOCKETS = compat.design(
    "bounded_sockets",
    "uvicorn",
    UVICORN,
    "uvicorn's httptools protocol with the kernel's send buffers",
    why="progress coalesces for slow readers: with small send buffers a reader's backlog "
    "stays in its bounded queue, where the latest progress wins; without, the kernel holds "
    "it all (a stopped reader then got 2986 of 3000 stale reports instead of at most 158)",
)
COALESCING_WEBSOCKETS = compat.speed_up(
    "coalescing_websockets",
    "uvicorn",
    UVICORN,
    "uvicorn's websockets-sansio protocol, one write per message",
    figure="P6 / P13: one write per connection per loop pass",
)
HIREDIS_PACKING = compat.speed_up(
    "hiredis_packing",
    "redis, hiredis",
    "redis 8.1.0, hiredis 3.5.0",
    "redis-py's asyncio command packing, in Python",
    figure="P1 / P11: the API's CPU per Redis script call",
)


def decide_all(settings: Settings) -> None:
    """Decide every API internal once, at start-up: on, or stock with one warning."""
    leak_free = compat.decide(EXECUTOR_LEAKS, _check_executor_leaks, settings)
    compat.decide(EXECUTOR, _check_executor if leak_free else _needs_leak_fix, settings)
    compat.decide(BOUNDED_SOCKETS, _check_http_protocol, settings)
    compat.decide(COALESCING_WEBSOCKETS, _check_websockets_protocol, settings)
    compat.decide(HIREDIS_PACKING, _check_packing, settings)


def is_plain_attribute(field: GraphQLField) -> bool:
    """The field returns its source's attribute and does nothing else, so its resolver can
    run without ``info``: no resolver, arguments, permission classes or field extensions."""
    definition = field.extensions.get(GraphQLCoreConverter.DEFINITION_BACKREF)
    return (
        isinstance(definition, StrawberryField)
        and definition.is_basic_field
        and not definition.permission_classes
        and not field.args
        and is_default_resolver(field.resolve)  # type: ignore[arg-type]
    )


def _check_executor_leaks() -> None:
    """A real executor, built by graphql-core, has the helpers and the memo the fix replaces,
    and the attributes its slots take out of the instance dict."""
    _parameters(StockExecutionContext.execute_operation, "self serially")
    executor = StockExecutionContext.build(build_schema("type Query { a: Int }"), parse("{ a }"))
    if isinstance(executor, list):
        raise TypeError(f"could not build an executor: {executor}")
    if not isinstance(getattr(executor, "_relevant_sub_fields", None), dict):
        raise AttributeError("the executor keeps no _relevant_sub_fields memo")
    for name in (
        "async_helpers", "gather_async_work", "track_async_work", "defer_usage_set",
        "groups", "streams", "tasks",
    ):  # fmt: skip
        if not hasattr(executor, name):
            raise AttributeError(f"the executor has no {name!r}")


def _needs_leak_fix() -> None:
    raise LookupError(f"it builds on {EXECUTOR_LEAKS.name}, which is off")


def _check_executor() -> None:
    _parameters(
        collect_fields,
        "schema fragments variable_values runtime_type operation hide_suggestions",
    )
    _parameters(
        collect_subfields,
        "schema fragments variable_values operation return_type field_details_list "
        "hide_suggestions",
    )
    _require(CollectedFields, "_fields", ("grouped_field_set", "new_defer_usages"))
    _require(FieldDetails, "_fields", ("node",))
    _require(FragmentDetails, "_fields", ("definition", "variable_signatures"))
    executor = StockExecutionContext.build(build_schema("type Query { a: Int }"), parse("{ a }"))
    if isinstance(executor, list):
        raise TypeError(f"could not build an executor: {executor}")
    for name in (
        "abort_signal", "middleware_manager", "hide_suggestions", "fragments",
        "variable_values", "operation", "root_value",
    ):  # fmt: skip
        if not hasattr(executor, name):
            raise AttributeError(f"the executor has no {name!r}")
    _check_plain_attributes()


def _check_plain_attributes() -> None:
    """Only a bare attribute counts as plain: not a resolver, nor a guarded attribute."""

    class Nobody(BasePermission):
        def has_permission(self, source: Any, info: Any, **kwargs: Any) -> bool:
            return False

    @strawberry.type
    class Probe:
        bare: int
        guarded: int = strawberry.field(permission_classes=[Nobody])

        @strawberry.field
        def computed(self) -> int:
            return 0

    fields = strawberry.Schema(query=Probe)._schema.query_type.fields  # type: ignore[union-attr]
    seen = {name: is_plain_attribute(field) for name, field in fields.items()}
    if seen != {"bare": True, "guarded": False, "computed": False}:
        raise ValueError(f"plain attribute fields misread: {seen}")


def _check_http_protocol() -> None:
    """A real protocol, built as uvicorn builds one, picks its WebSocket class where the
    subclass swaps it."""
    _parameters(HttpToolsProtocol.connection_made, "self transport")
    with _uvicorn_protocol(HttpToolsProtocol) as protocol:
        if getattr(protocol, "ws_protocol_class", None) is not WebSocketsSansIOProtocol:
            raise AttributeError("HttpToolsProtocol no longer keeps ws_protocol_class")


def _check_websockets_protocol() -> None:
    """A real protocol keeps the transport ``connection_made`` gives it, which the subclass
    wraps."""
    _parameters(WebSocketsSansIOProtocol.connection_made, "self transport")
    with _uvicorn_protocol(WebSocketsSansIOProtocol) as protocol:
        transport = _ProbeTransport()
        protocol.connection_made(transport)
        if getattr(protocol, "transport", None) is not transport:
            raise AttributeError("connection_made no longer keeps its transport")
        protocol.connections.discard(protocol)


class _ProbeTransport:
    """No socket behind: enough for a protocol to read its peer's (absent) addresses."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


@contextlib.contextmanager
def _uvicorn_protocol(cls: type[Any]) -> Iterator[Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    config = Config(app=app, http="httptools", ws="websockets-sansio", log_config=None)
    config.load()
    loop = asyncio.new_event_loop()
    try:
        yield cls(config, ServerState(), {}, loop)
    finally:
        loop.close()


def _check_packing() -> None:
    packing.check()


def _parameters(function: Callable[..., Any], expected: str) -> None:
    """``function`` takes at least these parameters, in this order."""
    names = list(inspect.signature(function).parameters)
    wanted = expected.split()
    if names[: len(wanted)] != wanted:
        raise TypeError(f"{function.__qualname__}{tuple(names)}, expected {tuple(wanted)}")


def _require(owner: object, attribute: str, members: tuple[str, ...] | None) -> None:
    value = getattr(owner, attribute, None)
    if value is None:
        raise AttributeError(f"{owner!r} has no {attribute!r}")
    missing = [member for member in members or () if member not in value]
    if missing:
        raise AttributeError(f"{owner!r}.{attribute} lacks {missing}")
