"""Base model and field types for task inputs and outputs: fields are snake_case in Python and
camelCase on the wire, as GraphQL clients expect, and both spellings validate, so existing Celery
callers passing keyword arguments keep working.
"""

from __future__ import annotations

from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, WithJsonSchema
from pydantic.alias_generators import to_camel


class JobModel(BaseModel):
    """Subclass this for a task's input and output models."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class EmailMarker:
    """Tags :data:`Email` so the schema can offer it as the ``Email`` scalar."""


def _check_email(address: str) -> str:
    """Syntax only: no DNS lookup on the request path."""
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return address


Email = Annotated[
    str,
    AfterValidator(_check_email),
    WithJsonSchema({"type": "string", "format": "email"}),
    EmailMarker(),
]
