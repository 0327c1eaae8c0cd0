"""The API's uses of library internals: each one a fast path in :mod:`tasks.core.compat`'s register.

Every private name the API imports is imported here and nowhere else. The classes built on
them stay beside the code they serve (:mod:`gql.compat.execution`, :mod:`gql.http.sockets`,
:mod:`gql.http.transports`), and run only when :func:`enable`, called once by the app factory,
found the internal in the shape it was verified on and ``JOBQL_FAST_PATHS`` allows it.
Otherwise the library's stock behaviour runs, after one warning naming what changed.

- ``executor``: graphql-core's executor internals and Strawberry's marker on plain
  attribute resolvers, for :class:`gql.compat.execution.JobQLExecutor`. Stock: Strawberry's
  execution context.
- ``content_type_cache``: Strawberry's view parses every request's Content-Type through a
  module global, replaced by a cached copy. Stock: parsed on every request.
- ``stream_transport_cache``: Strawberry's view picks a streaming transport by parsing every
  request's Accept header (with the email package, for multipart); the pick is remembered
  per Accept value. Stock: parsed on every request.
- ``bounded_sockets``: uvicorn's httptools protocol, with small send buffers. Stock:
  uvicorn's protocol as it is.
- ``coalescing_websockets``: uvicorn's websockets-sansio protocol, one write per connection
  per loop pass. Stock: one write per message.
- ``joined_responses``: uvicorn's httptools request cycle, an HTTP response's head and body
  in one write. Stock: two writes (two system calls, two segments) per response.
- ``hiredis_packing``: redis-py's asyncio connections pack commands with hiredis, as its
  blocking client does (``gql.compat.packing``). Stock: packed in Python, a buffer re-joined per
  argument.

A private module that moved away fails the import at start-up, loudly: the pins in
``pyproject.toml`` keep that from happening by surprise, and ``make test-latest`` shows it
before an upgrade.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
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
from strawberry.http import async_base_view
from strawberry.http.base import BaseView
from strawberry.http.parse_content_type import parse_content_type
from strawberry.permission import BasePermission
from strawberry.resolvers import is_default_resolver
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext
from strawberry.schema.schema_converter import GraphQLCoreConverter
from strawberry.types.field import StrawberryField
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gql.compat import packing
from tasks.core.compat import FastPath
from tasks.core.compat import enable as register

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

EXECUTOR = FastPath(
    name="executor",
    library="graphql-core, strawberry-graphql",
    verified=GRAPHQL,
    fallback="Strawberry's stock execution context",
)
CONTENT_TYPE_CACHE = FastPath(
    name="content_type_cache",
    library="strawberry-graphql",
    verified=STRAWBERRY,
    fallback="Content-Type parsed on every request",
)
STREAM_TRANSPORT_CACHE = FastPath(
    name="stream_transport_cache",
    library="strawberry-graphql",
    verified=STRAWBERRY,
    fallback="the Accept header parsed on every request",
)
BOUNDED_SOCKETS = FastPath(
    name="bounded_sockets",
    library="uvicorn",
    verified=UVICORN,
    fallback="uvicorn's httptools protocol with the kernel's send buffers",
)
COALESCING_WEBSOCKETS = FastPath(
    name="coalescing_websockets",
    library="uvicorn",
    verified=UVICORN,
    fallback="uvicorn's websockets-sansio protocol, one write per message",
)
JOINED_RESPONSES = FastPath(
    name="joined_responses",
    library="uvicorn",
    verified=UVICORN,
    fallback="uvicorn's httptools protocol, a response's head and body written apart",
)
HIREDIS_PACKING = FastPath(
    name="hiredis_packing",
    library="redis, hiredis",
    verified="redis 8.1.0, hiredis 3.5.0",
    fallback="redis-py's asyncio command packing, in Python",
)


def enable(fast_paths: bool) -> None:
    """Decide every API fast path once, at start-up: on, or stock with one warning."""
    register(EXECUTOR, _check_executor, allowed=fast_paths)
    register(CONTENT_TYPE_CACHE, _check_content_type, allowed=fast_paths)
    register(STREAM_TRANSPORT_CACHE, _check_stream_transport, allowed=fast_paths)
    register(BOUNDED_SOCKETS, _check_http_protocol, allowed=fast_paths)
    register(COALESCING_WEBSOCKETS, _check_websockets_protocol, allowed=fast_paths)
    register(JOINED_RESPONSES, _check_request_cycle, allowed=fast_paths)
    register(HIREDIS_PACKING, _check_packing, allowed=fast_paths)
    async_base_view.parse_content_type = (  # type: ignore[attr-defined]
        _cached_parse_content_type if CONTENT_TYPE_CACHE.active else parse_content_type
    )


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


# Strawberry parses Content-Type with the email package (~4% of a small query's CPU,
# measured); the answer depends only on the header's text.
_cached_parse_content_type = functools.lru_cache(maxsize=64)(parse_content_type)


def _check_executor() -> None:
    _parameters(
        StockExecutionContext.complete_object_value,
        "self return_type field_details_list info path result position_context",
    )
    _parameters(StockExecutionContext.execute_operation, "self serially")
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
        "_relevant_sub_fields", "async_helpers", "abort_signal", "middleware_manager",
        "hide_suggestions", "fragments", "variable_values", "operation", "root_value",
        "gather_async_work", "track_async_work", "defer_usage_set", "groups", "streams",
        "tasks",
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


def _check_content_type() -> None:
    current = getattr(async_base_view, "parse_content_type", None)
    if current not in (parse_content_type, _cached_parse_content_type):
        raise AttributeError("strawberry.http.async_base_view no longer uses parse_content_type")
    _parameters(parse_content_type, "content_type")


def _check_stream_transport() -> None:
    _parameters(BaseView._get_stream_transport_from_headers, "self headers")
    _source_mentions(async_base_view.AsyncBaseHTTPView.parse_http_body,
                     "self._get_stream_transport_from_headers(request.headers)")  # fmt: skip
    _source_mentions(BaseView._get_stream_transport_from_headers, 'key.lower() == "accept"')


def _check_http_protocol() -> None:
    _parameters(HttpToolsProtocol.connection_made, "self transport")
    _source_mentions(HttpToolsProtocol.__init__, "self.ws_protocol_class")


def _check_websockets_protocol() -> None:
    _parameters(WebSocketsSansIOProtocol.connection_made, "self transport")
    _source_mentions(WebSocketsSansIOProtocol.connection_made, "self.transport = transport")


def _check_request_cycle() -> None:
    _parameters(HttpToolsProtocol.on_headers_complete, "self")
    _parameters(HttpToolsProtocol.shutdown, "self")
    _source_mentions(HttpToolsProtocol.on_headers_complete, "self.cycle = RequestResponseCycle(")
    _source_mentions(HttpToolsProtocol.on_headers_complete, "transport=self.transport")
    _source_mentions(RequestResponseCycle.__init__, "self.transport = transport")
    _source_mentions(RequestResponseCycle.send, "self.transport.write(")


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


def _source_mentions(function: Callable[..., Any], text: str) -> None:
    if text not in inspect.getsource(function):
        raise AttributeError(f"{function.__qualname__} no longer sets {text.split()[0]!r}")
