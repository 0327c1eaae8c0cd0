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
per selection: a page of 50 jobs is 50 cheap projections instead of 50 walks through
graphql-core's field machinery. Same fallbacks as above. The parser cache hands every
request of one query text the same document, so a selection's projection is kept with its
operation (see :class:`_SharedPlans`) and the next request of that query compiles nothing;
an operation whose directives take variables (``@include(if: $x)``) selects per request,
so it compiles per request as before.

No slow path is silent: every event or object that takes graphql-core's path counts on the
``executor`` fast path's ``fallbacks`` (``/health/stats``), logged once per selection. The executor
overrides graphql-core internals, so it runs only where :mod:`gql.compat.register` decided it may
(``JOBQL_FAST_PATHS``, and a start-up check of those internals); the private names it uses come from
there.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from graphql import (
    BREAK,
    DirectiveNode,
    ExecutionResult,
    GraphQLLeafType,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLResolveInfoHelpers,
    OperationDefinitionNode,
    OperationType,
    Undefined,
    VariableNode,
    Visitor,
    is_leaf_type,
    is_list_type,
    is_non_null_type,
    is_object_type,
    visit,
)

from gql.compat import register as compat
from gql.compat.register import (
    FieldDetails,
    StockExecutionContext,
    collect_fields,
    collect_subfields,
    is_plain_attribute,
)

logger = logging.getLogger(__name__)

Projection = Callable[[Any], Any]


class OffContract(Exception):
    """This event's value needs graphql-core's full completion (it reports the error)."""


class Uncompilable(Exception):
    """The selection set uses something the projection does not cover."""


class JobQLExecutor(StockExecutionContext):
    """Strawberry's executor: objects and subscription events completed by compiled
    projections where safe, and no reference cycle through the executor."""

    # Out of the instance dict: graphql-core's executor sets 32 attributes and CPython 3.11
    # shares one key table between instances only up to 30, so each executor paid for a
    # dict of its own (1.6 KiB, measured), and a subscription holds its executor for life.
    __slots__ = ("_event_plan", "_object_plans", "defer_usage_set", "groups", "streams", "tasks")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Shared with every per-event copy (they are shallow): compiled on the first event.
        self._event_plan: list[Plan] = []
        # Per selection of an object type, kept with the field list its key refers to.
        self._object_plans: dict[tuple[str, int], Plan] = {}
        self.async_helpers = _weak_helpers(self)

    def __copy__(self) -> JobQLExecutor:
        """A shallow copy (graphql-core makes one per event and per deferred group), as
        ``copy.copy`` would make it, without its slow path for slots."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        for name in JobQLExecutor.__slots__:
            setattr(clone, name, getattr(self, name))
        return clone

    def execute_operation(self, serially: bool | None = None) -> Any:
        # Only events run a subscription's operation: the subscribe step has its own call.
        if self.operation.operation is not OperationType.SUBSCRIPTION:
            return super().execute_operation(serially)
        if not self._event_plan:
            self._event_plan.append(self._event_plan_shared())
        plan = self._event_plan[0]
        if plan.project is None:
            _fell_back(plan)
        else:
            try:
                return ExecutionResult(data=plan.project(self.root_value), errors=None)
            except Exception as exc:  # off-contract values go the full way, which reports them
                _fell_back(plan, exc)
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
        if plan.project is None:
            _fell_back(plan)
        else:
            try:
                return plan.project(result)
            except Exception as exc:
                _fell_back(plan, exc)
        return super().complete_object_value(
            return_type, field_details_list, info, path, result, position_context
        )

    def _object_plan(self, type_: GraphQLObjectType, details: Any) -> Plan:
        # graphql-core passes the same field list for every item of a list: its identity is
        # the selection, as in graphql-core's own memo of sub-fields.
        key = (type_.name, id(details))
        plan = self._object_plans.get(key)
        if plan is None:
            try:
                self._unsupported()
            except Uncompilable as exc:
                plan = Plan(type_.name, details)
                plan.why = str(exc)
            else:
                plan = _SHARED.plan(self, type_, details)
            self._object_plans[key] = plan
        return plan

    def _compile_object(self, type_: GraphQLObjectType, details: Any) -> Plan:
        plan = Plan(type_.name, details)
        try:
            plan.project = self._object(type_, details)
        except Uncompilable as exc:
            plan.why = str(exc)  # not the exception: its traceback holds the executor
        return plan

    def _unsupported(self) -> None:
        if self.abort_signal is not None:
            raise Uncompilable("an abort signal")
        manager = self.middleware_manager
        if manager is not None and manager.middlewares:
            raise Uncompilable("middleware")

    def _event_plan_shared(self) -> Plan:
        """The operation's plan, compiled once for every subscription that sends the same
        document (the parser cache hands them one): see :class:`_SharedPlans`."""
        try:
            self._unsupported()
        except Uncompilable:
            return self._compile_event()
        return _SHARED.event_plan(self)

    def _compile_event(self) -> Plan:
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
        details = [field for fields in collected.grouped_field_set.values() for field in fields]
        plan = Plan(root_type.name, details)
        try:
            self._unsupported()
            if collected.new_defer_usages or len(collected.grouped_field_set) != 1:
                raise Uncompilable("@defer or more than one root field")
            ((key, details),) = collected.grouped_field_set.items()
            field = root_type.fields.get(details[0].node.name.value)
            if field is None:
                raise Uncompilable(details[0].node.name.value)
            project = self._value(field.type, details)
        except Uncompilable as exc:
            plan.why = str(exc)
            return plan
        # Strawberry resolves a subscription's root field to the event itself.
        resolve = field.resolve
        assert resolve is not None
        plan.project = lambda payload: {key: project(resolve(payload, None))}
        return plan

    def _value(self, type_: GraphQLOutputType, details: list[FieldDetails]) -> Projection:
        if is_non_null_type(type_):
            inner = self._value(type_.of_type, details)

            def non_null(value: Any) -> Any:
                completed = inner(value)
                if completed is None:
                    raise OffContract
                return completed

            return non_null
        if is_list_type(type_):
            item = self._value(type_.of_type, details)

            def items(value: Any) -> Any:
                if value is None:
                    return None
                if not isinstance(value, list | tuple):
                    raise OffContract  # graphql-core's path takes any iterable, or says why not
                return [item(each) for each in value]

            return items
        if is_leaf_type(type_):
            return _leaf(type_)
        if is_object_type(type_):
            return self._object(type_, details)
        raise Uncompilable(f"abstract type {type_}")

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
        if collected.new_defer_usages:
            raise Uncompilable("@defer")
        if type_.is_type_of is not None:
            raise Uncompilable(f"{type_.name}'s own type check")
        fields: list[tuple[str, Callable[..., Any], Projection]] = []
        for key, sub_details in collected.grouped_field_set.items():
            name = sub_details[0].node.name.value
            if name == "__typename":
                fields.append((key, _constant(type_.name), _same))
                continue
            field = type_.fields[name]
            if not is_plain_attribute(field):
                raise Uncompilable(f"{type_.name}.{name} is more than a plain attribute")
            fields.append((key, field.resolve, self._value(field.type, sub_details)))

        def project(source: Any) -> Any:
            if source is None:
                return None
            return {key: complete(resolve(source, None)) for key, resolve, complete in fields}

        return project


class Plan:
    """How one selection is completed: by its projection, or by graphql-core and why."""

    __slots__ = ("details", "project", "type_name", "why")

    def __init__(self, type_name: str, details: Any) -> None:
        self.type_name = type_name
        self.details = details  # also keeps the field list alive while its id() is a key
        self.project: Projection | None = None
        self.why = ""  # what the projection does not cover, when it has none


class _SharedPlans:
    """Object and event plans kept per (schema, operation), for the next request (or
    subscription) of the same document.

    A plan depends on the schema, the operation's fields and fragments and, through
    ``@skip``/``@include``/``@defer``, on variables: operations whose directives take
    variables are not shared. An operation node comes from one parsed document, so its
    identity names its fragments too. Entries hold their schema and operation, so the ids
    in the keys cannot be reused while they live; the least recently used goes first.
    """

    LIMIT = 512

    def __init__(self) -> None:
        self._operations: OrderedDict[tuple[int, int], _OperationPlans] = OrderedDict()

    def plan(self, executor: JobQLExecutor, type_: GraphQLObjectType, details: Any) -> Plan:
        if any(d.defer_usage is not None or d.fragment_variable_values for d in details):
            return executor._compile_object(type_, details)
        entry = self._entry(executor)
        if entry.varies:
            return executor._compile_object(type_, details)
        plan_key = (type_.name, *(id(d.node) for d in details))
        plan = entry.plans.get(plan_key)
        if plan is None:
            plan = entry.plans[plan_key] = executor._compile_object(type_, details)
        return plan

    def event_plan(self, executor: JobQLExecutor) -> Plan:
        """A subscription's event plan: held by thousands of subscriptions of one document,
        a plan each was a tenth of a subscription's memory."""
        entry = self._entry(executor)
        if entry.varies:
            return executor._compile_event()
        if entry.event is None:
            plan = executor._compile_event()
            if plan.project is None:
                return plan
            entry.event = plan
        return entry.event

    def _entry(self, executor: JobQLExecutor) -> _OperationPlans:
        schema, operation = executor.schema, executor.operation
        key = (id(schema), id(operation))
        entry = self._operations.get(key)
        if entry is None or entry.operation is not operation or entry.schema is not schema:
            entry = _OperationPlans(schema, operation, executor.fragments)
            self._operations[key] = entry
            if len(self._operations) > self.LIMIT:
                self._operations.popitem(last=False)
        else:
            self._operations.move_to_end(key)
        return entry

    def clear(self) -> None:
        self._operations.clear()


class _OperationPlans:
    __slots__ = ("event", "operation", "plans", "schema", "varies")

    def __init__(self, schema: Any, operation: OperationDefinitionNode, fragments: Any) -> None:
        self.schema = schema
        self.operation = operation
        # Its field nodes are the keys' ids: held here, they stay the same objects. An
        # operation without variables is not walked: a query written with its values
        # inline is often sent once, and its directives can take no variable.
        # Fragments with arguments of their own are not shared either.
        self.varies = bool(operation.variable_definitions) and (
            any(fragment.variable_signatures for fragment in fragments.values())
            or _directives_take_variables(
                [operation, *(fragment.definition for fragment in fragments.values())]
            )
        )
        self.plans: dict[tuple[Any, ...], Plan] = {}
        self.event: Plan | None = None


_SHARED = _SharedPlans()


class _VariableInDirective(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def enter_directive(self, node: DirectiveNode, *_: Any) -> Any:
        if any(_mentions_variable(argument.value) for argument in node.arguments or ()):
            self.found = True
            return BREAK
        return None


def _mentions_variable(node: Any) -> bool:
    if isinstance(node, VariableNode):
        return True
    values = getattr(node, "values", None) or ()
    fields = getattr(node, "fields", None) or ()
    return any(_mentions_variable(v) for v in values) or any(
        _mentions_variable(f.value) for f in fields
    )


def _directives_take_variables(nodes: list[Any]) -> bool:
    """Whether any directive of ``nodes`` takes a variable, at any depth of its arguments."""
    visitor = _VariableInDirective()
    for node in nodes:
        visit(node, visitor)
        if visitor.found:
            return True
    return False


# Selections whose fallback was logged, so each is logged once, not once per event.
_logged: set[tuple[str, str]] = set()
_LOGGED_LIMIT = 1024


def _fell_back(plan: Plan, error: Exception | None = None) -> None:
    """Count one event or object completed by graphql-core; log its selection once."""
    compat.EXECUTOR.count_fallback()
    if error is None:
        reason = f"not covered: {plan.why}"
    elif isinstance(error, OffContract):
        reason = "a value off the contract: graphql-core reports it"
    else:
        reason = f"unexpected {type(error).__name__}"
    selection = _selection_text(plan)
    if (selection, reason) in _logged:
        return
    if len(_logged) >= _LOGGED_LIMIT:
        _logged.clear()
    _logged.add((selection, reason))
    if error is not None and not isinstance(error, OffContract):
        reason = f"{reason}: {error}"
    logger.warning(
        "graphql-core's own execution completes %s at `%s`, %s "
        "(counted in /health/stats fast_paths.executor.fallbacks)",
        plan.type_name,
        selection,
        reason,
    )


def _selection_text(plan: Plan) -> str:
    node = plan.details[0].node if plan.details else None
    loc = node.loc if node is not None else None
    if loc is None:
        return node.name.value if node is not None else "?"
    return " ".join(loc.source.body[loc.start : loc.end].split())


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


def _weak_helpers(executor: StockExecutionContext) -> GraphQLResolveInfoHelpers:
    """The executor's resolver helpers without a reference cycle through the executor.

    graphql-core binds them to the executor itself, so every executor is cyclic garbage
    that only the cyclic collector frees. A subscription's executor lives long enough to
    reach the oldest generation, where only a full collection (~0.5 s at 5,000
    subscriptions) would free it and everything it holds.
    """
    helpers = _WeakExecutor(executor)
    return GraphQLResolveInfoHelpers(gather=helpers.gather, track=helpers.track)


class _WeakExecutor:
    """The executor by weak reference: an object with two methods, lighter than two
    closures and their cells, since every live subscription holds one."""

    __slots__ = ("_ref",)

    def __init__(self, executor: StockExecutionContext) -> None:
        self._ref = weakref.ref(executor)

    def gather(self, values: Any) -> Any:
        live = self._ref()
        assert live is not None, "executor gone"
        return live.gather_async_work(values)

    def track(self, values: Any) -> None:
        live = self._ref()
        assert live is not None, "executor gone"
        live.track_async_work(values)


def execution_context_class() -> type[StockExecutionContext] | None:
    """JobQL's executor when its fast path is on (see :func:`gql.compat.register.enable`); ``None``
    leaves Strawberry's stock one."""
    return JobQLExecutor if compat.EXECUTOR.active else None
