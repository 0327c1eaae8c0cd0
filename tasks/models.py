"""Base model and field types for task inputs and outputs.

Fields are snake_case in Python and camelCase on the wire, as GraphQL clients expect; both
spellings are accepted when validating, so existing Celery callers passing keyword
arguments keep working.
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


# RFC 2606 reserves ``.invalid`` like ``.test``; email-validator refuses it outright, but
# the example tasks use it on purpose to show a permanent failure, so it is checked as
# ``.test`` would be.
_RESERVED_FOR_EXAMPLES = ".invalid"


def _check_email(address: str) -> str:
    local, _, domain = address.rpartition("@")
    checked = address
    if domain.lower().endswith(_RESERVED_FOR_EXAMPLES):
        checked = f"{local}@{domain[: -len(_RESERVED_FOR_EXAMPLES)]}.test"
    try:
        validate_email(checked, check_deliverability=False, test_environment=True)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return address


Email = Annotated[
    str,
    AfterValidator(_check_email),
    WithJsonSchema({"type": "string", "format": "email"}),
    EmailMarker(),
]
