"""A workflow tree from the client, checked whole before anything is recorded or sent, so a bad
tree starts nothing: every error names the path of the offending step as the client wrote it
(``input.root.chain.1.task.resultTo``), all are reported at once, and what a step receives is
checked against what the step before it returns (the previous task's output model, or a list
after a group) through the JSON Schema of the field that takes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gql.services.errors import BadUserInput
from gql.services.producer import Delivery
from tasks.core import slots
from tasks.core.canvas import Chain, Chord, Group, Node, Step
from tasks.core.registry import TaskSpec

# What a step produces, as far as the schemas tell: a JSON Schema with its $defs; the empty
# schema when anything may come (an untyped output). None where nothing comes before.
Produced = tuple[dict[str, Any], dict[str, Any]]
_ANY: Produced = ({}, {})
_LIST: Produced = ({"type": "array"}, {})


@dataclass
class Planned:
    """The checked tree, its steps' weights and what each step's record shows as input."""

    root: Node
    weights: dict[str, float] = field(default_factory=dict)
    shown_inputs: dict[str, Any] = field(default_factory=dict)


class Planner:
    """Turns the client's tree (plain data, GraphQL names) into canvas nodes."""

    def __init__(
        self,
        *,
        workflow_id: str,
        spec: Callable[[str], TaskSpec | None],
        delivery: Callable[[TaskSpec], Delivery],
        max_steps: int,
    ) -> None:
        self._workflow_id = workflow_id
        self._spec = spec
        self._delivery = delivery
        self._max_steps = max_steps
        self._errors: list[dict[str, str]] = []
        self._planned = Planned(root=Chain([]))

    def plan(self, tree: Any, path: str) -> Planned:
        count = _count_tasks(tree)
        if count > self._max_steps:
            self._error(path, f"has {count} steps; at most {self._max_steps} are allowed")
        else:
            root, _ = self._node(tree, path, None)
            if root is not None:
                self._planned.root = root
        if self._errors:
            summary = "; ".join(f"{e['path']}: {e['message']}" for e in self._errors)
            raise BadUserInput(f"Invalid workflow: {summary}", self._errors)
        return self._planned

    def _error(self, path: str, message: str) -> None:
        self._errors.append({"path": path, "message": message})

    def _node(
        self, tree: Any, path: str, previous: Produced | None
    ) -> tuple[Node | None, Produced]:
        """Check one node; ``previous`` is what comes before it (None: nothing does)."""
        kinds = [k for k in ("task", "chain", "group", "chord") if _given(tree, k)]
        if len(kinds) != 1:
            self._error(path, "give exactly one of task, chain, group, chord")
            return None, _ANY
        kind = kinds[0]
        value, here = tree[kind], f"{path}.{kind}"
        if kind == "task":
            return self._step(value, here, previous)
        if kind == "chord":
            return self._chord(value, here, previous)
        items = value if isinstance(value, list) else []
        if not items:
            self._error(here, "must hold at least one step")
            return None, _ANY
        if kind == "group":
            nodes = [self._node(item, f"{here}.{i}", previous)[0] for i, item in enumerate(items)]
            return Group([n for n in nodes if n is not None]), _LIST
        chained: list[Node] = []
        produced: Produced | None = previous
        for i, item in enumerate(items):
            node, produced = self._node(item, f"{here}.{i}", produced)
            if node is not None:
                chained.append(node)
        return Chain(chained), produced if produced is not None else _ANY

    def _chord(
        self, value: Any, path: str, previous: Produced | None
    ) -> tuple[Node | None, Produced]:
        header = value.get("group") if isinstance(value, dict) else None
        if not header:
            self._error(f"{path}.group", "must hold at least one step")
            return None, _ANY
        nodes = [
            self._node(item, f"{path}.group.{i}", previous)[0] for i, item in enumerate(header)
        ]
        body, produced = self._step(value.get("then"), f"{path}.then", _LIST)
        if body is None or not isinstance(body, Step):
            return None, _ANY
        return Chord([n for n in nodes if n is not None], body), produced

    def _step(
        self, value: Any, path: str, previous: Produced | None
    ) -> tuple[Node | None, Produced]:
        if not isinstance(value, dict):
            self._error(path, "must be a task step")
            return None, _ANY
        name = str(value.get("name") or "")
        spec = self._spec(name)
        if spec is None or spec.input_model is None:
            known = "unknown task" if spec is None else "a task without an input model"
            self._error(f"{path}.name", f"{known} {name!r}; workflows run typed tasks")
            return None, _ANY
        weight = value.get("weight")
        weight = 1.0 if weight is None else float(weight)
        if not 0 < weight <= 1000:
            self._error(f"{path}.weight", "must be above 0 and at most 1000")
        data = value.get("input") or {}
        if not isinstance(data, dict):
            self._error(f"{path}.input", "must be a JSON object")
            return None, _ANY
        receive = value.get("resultTo") or None
        result_path = tuple(p for p in str(value.get("resultPath") or "").split(".") if p)
        if receive is not None:
            if previous is None:
                self._error(f"{path}.resultTo", "no step comes before this one")
                receive = None
            else:
                receive = self._check_receive(spec, receive, previous, result_path, path)
        elif result_path:
            self._error(f"{path}.resultPath", "is only used with resultTo")
        kwargs, shown = self._validate(spec, data, receive, f"{path}.input")
        try:
            delivery = self._delivery(spec)
        except BadUserInput as exc:
            self._errors += [f for f in exc.extensions["fields"] if f not in self._errors]
            return None, _ANY
        step = Step(
            job_id=slots.new_id(slots.tag_of(self._workflow_id)),
            task=spec.name,
            kwargs=kwargs,
            queue=delivery.queue,
            priority=delivery.priority,
            workflow_id=self._workflow_id,
            receive=receive,
            path=result_path,
        )
        self._planned.weights[step.job_id] = weight
        self._planned.shown_inputs[step.job_id] = shown
        output = spec.output_schema()
        return step, (output, output.get("$defs", {})) if output else _ANY

    def _check_receive(
        self,
        spec: TaskSpec,
        receive: str,
        previous: Produced,
        result_path: tuple[str, ...],
        path: str,
    ) -> str | None:
        assert spec.input_model is not None
        schema = spec.input_model.model_json_schema(by_alias=True)
        properties = schema.get("properties", {})
        if receive not in properties:
            fields = ", ".join(properties)
            self._error(f"{path}.resultTo", f"{spec.name} has no input field {receive!r}: {fields}")
            return None
        source: Produced | None = previous
        for i, name in enumerate(result_path):
            source = _member(source, name) if source is not None else None
            if source is None:
                where = ".".join(result_path[: i + 1])
                self._error(f"{path}.resultPath", f"the previous result has no field {where!r}")
                return None
        wanted = _types(properties[receive], schema.get("$defs", {}))
        given = _types(*source) if source is not None else None
        if not _compatible(given, wanted):
            self._error(
                f"{path}.resultTo",
                f"{receive} takes {_names(wanted)} but the previous step gives {_names(given)}",
            )
            return None
        return receive

    def _validate(
        self, spec: TaskSpec, data: dict[str, Any], receive: str | None, path: str
    ) -> tuple[dict[str, Any], Any]:
        """The step's own input, checked now; the field it receives is checked on arrival."""
        try:
            return spec.prepare(data)
        except ValidationError as exc:
            assert spec.input_model is not None
            names = {receive, _python_name(spec, receive)} if receive else set()
            errors = [
                e for e in exc.errors(include_url=False) if not e["loc"] or e["loc"][0] not in names
            ]
            for item in errors:
                self._error(".".join([path, *map(str, item["loc"])]), item["msg"])
            return dict(data), dict(data)


def _given(tree: Any, kind: str) -> bool:
    return isinstance(tree, dict) and tree.get(kind) is not None


def _count_tasks(tree: Any) -> int:
    if isinstance(tree, list):
        return sum(_count_tasks(item) for item in tree)
    if not isinstance(tree, dict):
        return 0
    if _given(tree, "task"):
        return 1
    if _given(tree, "chord"):
        chord = tree["chord"] if isinstance(tree["chord"], dict) else {}
        return _count_tasks(chord.get("group") or []) + 1
    return sum(_count_tasks(tree.get(kind) or []) for kind in ("chain", "group"))


def _python_name(spec: TaskSpec, alias: str) -> str:
    assert spec.input_model is not None
    for name, info in spec.input_model.model_fields.items():
        if info.alias == alias:
            return name
    return alias


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return dict(defs.get(ref.removeprefix("#/$defs/"), {}))
    return schema


def _member(source: Produced, name: str) -> Produced | None:
    """What ``source`` holds under ``name``: None when its schema rules it out."""
    schema, defs = source
    schema = _resolve(schema, defs)
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return _ANY
    if name in properties:
        return (properties[name], defs)
    return _ANY if schema.get("additionalProperties") not in (None, False) else None


def _types(schema: dict[str, Any], defs: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema allows; None when it allows any."""
    schema = _resolve(schema, defs)
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return set(kind)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            found: set[str] = set()
            for member in schema[key]:
                types = _types(member, defs)
                if types is None:
                    return None
                found |= types
            return found
    return None


def _compatible(given: set[str] | None, wanted: set[str] | None) -> bool:
    if given is None or wanted is None:
        return True
    if "integer" in given and "number" in wanted:
        return True
    return bool(given & wanted)


def _names(types: set[str] | None) -> str:
    return "any JSON value" if types is None else " or ".join(sorted(types))
