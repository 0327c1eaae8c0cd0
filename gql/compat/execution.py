"""The executor every operation runs on: graphql-core's, without its two leaks, and with
subscription events projected instead of executed. :class:`LeakFreeExecutor` is a fix, always on:
it breaks the reference cycle graphql-core builds through the executor (a long subscription's
would wait for a full collection) and gives each event a fresh sub-field memo (graphql-core's
only grows). :class:`JobQLExecutor` adds the ``executor`` speed-up: a job's fields are plain
data, so a subscription's selection is compiled once per document into a projection of the
yielded object, and what it does not cover takes graphql-core's path, counted and logged.
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


class LeakFreeExecutor(StockExecutionContext):
    """Strawberry's executor without a reference cycle through itself, and with a fresh
    memo for every subscription event (see the module docstring)."""

    # Out of the instance dict: graphql-core's executor sets 32 attributes and CPython 3.11
    # shares one key table between instances only up to 30, so each executor paid for a
    # dict of its own, and a subscription holds its executor for life.
    __slots__ = ("defer_usage_set", "groups", "streams", "tasks")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.async_helpers = _weak_helpers(self)

    def __copy__(self) -> LeakFreeExecutor:
        """A shallow copy (graphql-core makes one per event and per deferred group), as
        ``copy.copy`` would make it, without its slow path for slots."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        for name in _slot_names(type(self)):
            setattr(clone, name, getattr(self, name))
        return clone

    def execute_operation(self, serially: bool | None = None) -> Any:
        if self.operation.operation is OperationType.SUBSCRIPTION:
            # Only events run a subscription's operation (subscribing has its own call).
            self._relevant_sub_fields = {}
        return super().execute_operation(serially)


_SLOTS: dict[type, tuple[str, ...]] = {}


def _slot_names(cls: type) -> tuple[str, ...]:
    """Every slot of ``cls`` and its bases: worked out once per class, not on every event."""
    names = _SLOTS.get(cls)
    if names is None:
        names = _SLOTS[cls] = tuple(
            name for base in cls.__mro__ for name in base.__dict__.get("__slots__", ())
        )
    return names


class JobQLExecutor(LeakFreeExecutor):
    """The leak-free executor, with subscription events completed by a compiled projection
    where safe."""

    __slots__ = ("_event_plan",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Shared with every per-event copy (they are shallow): compiled on the first event.
        self._event_plan: list[Plan] = []

    def execute_operation(self, serially: bool | None = None) -> Any:
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
        return super().execute_operation(serially)

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
    """Event plans kept per (schema, operation), for the next subscription of the same
    document.

    A plan depends on the schema, the operation's fields and fragments and, through
    ``@skip``/``@include``/``@defer``, on variables: operations whose directives take
    variables are not shared. An operation node comes from one parsed document, so its
    identity names its fragments too. Entries hold their schema and operation, so the ids
    in the keys cannot be reused while they live; the least recently used goes first.
    """

    LIMIT = 512

    def __init__(self) -> None:
        self._operations: OrderedDict[tuple[int, int], _OperationPlans] = OrderedDict()

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
    __slots__ = ("event", "operation", "schema", "varies")

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
    """JobQL's executor when its speed-up is on, the leak-free one when only the fix is, and
    ``None`` (Strawberry's stock executor) when not even the fix's check passed."""
    if compat.EXECUTOR.active:
        return JobQLExecutor
    return LeakFreeExecutor if compat.EXECUTOR_LEAKS.active else None
