"""Descriptions for the values of enums declared outside ``gql`` (Strawberry takes them
from ``strawberry.enum_value``, which a plain Python enum shared with ``tasks`` cannot use)."""

from __future__ import annotations

import dataclasses
from typing import Any


def describe_values(enum_type: Any, descriptions: dict[str, str]) -> None:
    """Give the values of an enum declared outside ``gql`` their GraphQL descriptions."""
    definition = enum_type.__strawberry_definition__
    definition.values = [
        dataclasses.replace(value, description=descriptions[value.name])
        for value in definition.values
    ]
