"""GraphQL input types derived from a task's Pydantic input model, so a task is declared once:
field names are the model's camelCase aliases, simple defaults appear in the SDL, and types
GraphQL cannot express exactly (unions, constrained or free-form values) become ``JSON``, which
Pydantic validates, reporting the offending path.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from typing import Any

import strawberry
from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from strawberry.scalars import JSON

from gql.schema.types import Email
from tasks.core.models import EmailMarker

_SIMPLE = {int: int, float: float, str: str, bool: bool}


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


class InputTypes:
    """Builds (once per model) the Strawberry input type of each task input model."""

    def __init__(self) -> None:
        self._built: dict[type[BaseModel], type] = {}

    def for_model(self, model: type[BaseModel]) -> type:
        """Named after the model (``GenerateReportInput``): tasks sharing a model share it."""
        if model not in self._built:
            name = model.__name__ if model.__name__.endswith("Input") else f"{model.__name__}Input"
            self._built[model] = self._build(model, name)
        return self._built[model]

    def _build(self, model: type[BaseModel], name: str) -> type:
        annotations: dict[str, Any] = {}
        namespace: dict[str, Any] = {"__annotations__": annotations}
        for field_name, info in model.model_fields.items():
            graphql_type = self._graphql_type(info.annotation, info)
            options: dict[str, Any] = {
                "name": info.alias or to_camel(field_name),
                "description": info.description,
            }
            if not info.is_required():
                if info.default is None or type(info.default) in _SIMPLE:
                    options["default"] = info.default
                else:
                    # A default GraphQL cannot print is left to Pydantic to fill in.
                    graphql_type, options["default"] = graphql_type | None, strawberry.UNSET
            annotations[field_name] = graphql_type
            namespace[field_name] = strawberry.field(**options)
        cls = type(name, (), namespace)
        description = inspect.cleandoc(model.__doc__ or "") or f"Fields of {model.__name__}."
        return strawberry.input(cls, name=name, description=description)

    def _graphql_type(self, annotation: Any, info: FieldInfo | None = None) -> Any:
        if info is not None and any(isinstance(m, EmailMarker) for m in info.metadata):
            return Email
        if annotation in _SIMPLE:
            return _SIMPLE[annotation]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (typing.Union, types.UnionType):
            members = [a for a in args if a is not type(None)]
            if len(members) == 1 and len(members) < len(args):
                return self._graphql_type(members[0]) | None
            return JSON
        if origin is list and len(args) == 1 and args[0] in _SIMPLE:
            return types.GenericAlias(list, (_SIMPLE[args[0]],))
        if _is_model(annotation):
            return self.for_model(annotation)
        if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
            return JSON
        if origin is typing.Annotated:
            return self._graphql_type(args[0])
        return JSON


def to_data(value: Any) -> Any:
    """A Strawberry input object back to plain data keyed by its GraphQL (alias) names,
    so that Pydantic reports an invalid field by the name the client used."""
    definition = getattr(value, "__strawberry_definition__", None)
    if definition is not None:
        items = (
            (f.graphql_name or f.python_name, getattr(value, f.python_name))
            for f in definition.fields
        )
        return {name: to_data(item) for name, item in items if item is not strawberry.UNSET}
    if isinstance(value, list):
        return [to_data(item) for item in value]
    return value


def mutation_name(task: str) -> str:
    """``generate_report`` → ``generateReport``; dots and dashes count as word breaks."""
    return to_camel("".join(c if c.isalnum() else "_" for c in task))
