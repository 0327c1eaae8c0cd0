"""The executor every operation runs on: graphql-core's, with three costs of it removed.

1. Subscription events without graphql-core's per-event executor, where that is safe.

graphql-core executes a subscription's whole selection set again for every event: it builds a
per-event executor, collects the root fields anew and walks every field through its generic
completion machinery. For a dashboard watching thousands of jobs that is most of the API's
CPU. Worse, graphql-core 3.3 memoizes sub-field collection on the identity of field lists it
builds afresh for every event, in a dict shared by all events of the subscription: a
long-lived subscription's memo grows by an entry or two per event and never shrinks.

A job's fields are plain data: no arguments, no resolvers of their own. So the first event
of a subscription compiles its selection set (fragments, aliases and ``@skip``/``@include``
already applied by graphql-core's own field collection) into a projection of the yielded
object, and every event is the projection of its payload, coerced by the schema's own scalar
and enum types. Anything the projection does not cover takes graphql-core's path unchanged:
a field with a resolver or arguments, a list, an interface or union, a type with its own
type check, middleware, an abort signal, and any value the projection finds off-contract (a
null in a non-null field, a scalar that does not coerce), so errors keep their exact form.

2. No reference cycle through the executor (see :func:`_weak_helpers`): an ended
operation, above all a long-lived subscription, is freed by reference counting instead of
waiting for a full collection that pauses every stream.

3. Objects in queries and mutations completed by the same kind of projection, compiled once
per selection and operation: a page of 50 jobs is one compilation and 50 cheap projections
instead of 50 walks through graphql-core's field machinery. Same fallbacks as above.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from graphql import (
    ExecutionResult,
    GraphQLLeafType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfoHelpers,
    OperationType,
    Undefined,
    is_leaf_type,
    is_non_null_type,
    is_object_type,
)
from graphql.execution.collect_fields import FieldDetails, collect_fields, collect_subfields
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

Projection = Callable[[Any], Any]


class OffContract(Exception):
    """This event's value needs graphql-core's full completion (it reports the error)."""


class Uncompilable(Exception):
    """The selection set uses something the projection does not cover."""


class JobQLExecutor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's executor: objects and subscription events completed by compiled
    projections where safe, and no reference cycle through the executor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Shared with every per-event copy (they are shallow): compiled on the first event.
        self._event_plan: list[Projection | None] = []
        # Per selection of an object type, kept with the field list its key refers to.
        self._object_plans: dict[tuple[str, int], tuple[Any, Projection | None]] = {}
        self.async_helpers = _weak_helpers(self)

    def execute_operation(self, serially: bool | None = None) -> Any:
        # Only events run a subscription's operation: the subscribe step has its own call.
        event = self.operation.operation is OperationType.SUBSCRIPTION
        if not event or self.abort_signal is not None:
            return super().execute_operation(serially)
        if not self._event_plan:
            self._event_plan.append(self._compile())
        plan = self._event_plan[0]
        if plan is not None:
            # Off-contract values (and any surprise) go the full way, which reports them.
            with contextlib.suppress(Exception):
                return ExecutionResult(data=plan(self.root_value), errors=None)
        # Fresh memos per event: see the module docstring.
        self._relevant_sub_fields = {}
        self._object_plans = {}
        return super().execute_operation(serially)

    def complete_object_value(
        self,
        return_type: GraphQLObjectType,
        field_details_list: Any,
        info: Any,
        path: Any,
        result: Any,
        position_context: Any,
    ) -> Any:
        plan = self._object_plan(return_type, field_details_list)
        if plan is not None:
            with contextlib.suppress(Exception):
                return plan(result)
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _object_plan(self, type_: GraphQLObjectType, details: Any) -> Projection | None:
        # graphql-core passes the same field list for every item of a list: its identity is
        # the selection, as in graphql-core's own memo of sub-fields.
        key = (type_.name, id(details))
        entry = self._object_plans.get(key)
        if entry is None:
            plan: Projection | None = None
            if self.abort_signal is None and not self._has_middleware():
                with contextlib.suppress(Uncompilable):
                    plan = self._object(type_, details)
            entry = self._object_plans[key] = (details, plan)
        return entry[1]

    def _has_middleware(self) -> bool:
        manager = self.middleware_manager
        return manager is not None and bool(manager.middlewares)

    def _compile(self) -> Projection | None:
        if self._has_middleware():
            return None
        root_type = self.schema.subscription_type
        assert root_type is not None
        collected = collect_fields(
            self.schema,
            self.fragments,
            self.variable_values,
            root_type,
            self.operation,
            self.hide_suggestions,
        )
        if collected.new_defer_usages or len(collected.grouped_field_set) != 1:
            return None
        ((key, details),) = collected.grouped_field_set.items()
        field = root_type.fields.get(details[0].node.name.value)
        if field is None:
            return None
        try:
            project = self._value(field.type, details)
        except Uncompilable:
            return None
        # Strawberry resolves a subscription's root field to the event itself.
        resolve = field.resolve
        assert resolve is not None
        return lambda payload: {key: project(resolve(payload, None))}

    def _value(self, type_: GraphQLOutputType, details: list[FieldDetails]) -> Projection:
        if is_non_null_type(type_):
            inner = self._value(type_.of_type, details)

            def non_null(value: Any) -> Any:
                completed = inner(value)
                if completed is None:
                    raise OffContract
                return completed

            return non_null
        if is_leaf_type(type_):
            return _leaf(type_)
        if is_object_type(type_):
            return self._object(type_, details)
        raise Uncompilable(str(type_))

    def _object(self, type_: GraphQLObjectType, details: list[FieldDetails]) -> Projection:
        collected = collect_subfields(
            self.schema,
            self.fragments,
            self.variable_values,
            self.operation,
            type_,
            details,
            self.hide_suggestions,
        )
        if collected.new_defer_usages or type_.is_type_of is not None:
            raise Uncompilable(type_.name)
        fields: list[tuple[str, Callable[..., Any], Projection]] = []
        for key, sub_details in collected.grouped_field_set.items():
            name = sub_details[0].node.name.value
            if name == "__typename":
                fields.append((key, _constant(type_.name), _same))
                continue
            field = type_.fields[name]
            # Strawberry marks the resolver of a plain attribute field; it ignores `info`.
            if not getattr(field.resolve, "_is_default", False) or field.args:
                raise Uncompilable(f"{type_.name}.{name}")
            fields.append((key, field.resolve, self._value(field.type, sub_details)))

        def project(source: Any) -> Any:
            if source is None:
                return None
            return {key: complete(resolve(source, None)) for key, resolve, complete in fields}

        return project


def _leaf(type_: GraphQLLeafType) -> Projection:
    coerce = type_.coerce_output_value

    def leaf(value: Any) -> Any:
        if value is None:
            return None
        try:
            coerced = coerce(value)
        except Exception as exc:
            raise OffContract from exc
        if coerced is None or coerced is Undefined:
            raise OffContract
        return coerced

    return leaf


def _constant(value: str) -> Callable[[Any, None], str]:
    return lambda _source, _info: value


def _same(value: Any) -> Any:
    return value


def _weak_helpers(executor: StrawberryGraphQLCoreExecutionContext) -> GraphQLResolveInfoHelpers:
    """The executor's resolver helpers without a reference cycle through the executor.

    graphql-core binds them to the executor itself, so every executor is cyclic garbage
    that only the cyclic collector frees. A subscription's executor lives long enough to
    reach the oldest generation, where only a full collection (~0.5 s at 5,000
    subscriptions) would free it and everything it holds.
    """
    ref = weakref.ref(executor)

    def gather(values: Any) -> Any:
        live = ref()
        assert live is not None, "executor gone"
        return live.gather_async_work(values)

    def track(values: Any) -> None:
        live = ref()
        assert live is not None, "executor gone"
        live.track_async_work(values)

    return GraphQLResolveInfoHelpers(gather=gather, track=track)
