"""One error vocabulary, mapped to ``extensions.code`` at one boundary: resolvers raise the small
exceptions below, and :func:`classify` (called by ``JobQLSchema.process_errors`` for every error
of every operation and streamed event) gives each its code and masks whatever it does not
recognise, logged with its traceback, so no internal detail reaches a client. Masking here rather
than with Strawberry's ``MaskErrors`` spares every request and event that extension's hooks,
which showed in the profiles of the busiest paths.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterator, Sequence
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import kombu.exceptions
import redis.exceptions
from graphql import (
    BREAK,
    ArgumentNode,
    ASTValidationRule,
    DocumentNode,
    GraphQLError,
    Node,
    ObjectFieldNode,
    Visitor,
    visit,
)
from graphql.validation import ProvidedRequiredArgumentsRule, ValuesOfCorrectTypeRule
from pydantic import ValidationError
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from tasks.core.refusals import write_refusal

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    BAD_REQUEST = "BAD_REQUEST"  # a request this transport cannot carry out, refused whole


class JobQLError(Exception):
    code: ClassVar[ErrorCode]

    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.extensions = {"code": self.code.value, **extensions}


class BadUserInput(JobQLError):
    """Invalid input; ``fields`` lists each offending path in GraphQL's camelCase."""

    code = ErrorCode.BAD_USER_INPUT

    def __init__(self, message: str, fields: Sequence[dict[str, str]]) -> None:
        super().__init__(message, fields=list(fields))

    @classmethod
    def field(cls, path: str, message: str) -> BadUserInput:
        return cls(f"{path}: {message}", [{"path": path, "message": message}])

    @classmethod
    def from_validation(cls, error: ValidationError, prefix: str) -> BadUserInput:
        fields = [
            {"path": ".".join([prefix, *map(str, item["loc"])]), "message": item["msg"]}
            for item in error.errors(include_url=False)
        ]
        summary = "; ".join(f"{f['path']}: {f['message']}" for f in fields)
        return cls(f"Invalid input: {summary}", fields)


class NotFound(JobQLError):
    code = ErrorCode.NOT_FOUND


class Forbidden(JobQLError):
    """Signed in, but not allowed: an operation for admins only."""

    code = ErrorCode.FORBIDDEN


class ServiceUnavailable(JobQLError):
    code = ErrorCode.SERVICE_UNAVAILABLE


class Unauthenticated(JobQLError):
    """No credential, or one that is malformed, expired, or not signed by a trusted key."""

    code = ErrorCode.UNAUTHENTICATED


class RateLimited(JobQLError):
    """Too much, too fast; ``retryAfter`` (seconds) says when to try again."""

    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, retry_after: float) -> None:
        # Rounded up to the millisecond: a wait under half of one rounded to 0, and a client
        # told to retry after 0 s was refused again at once.
        super().__init__(message, retryAfter=math.ceil(retry_after * 1000) / 1000)


# What a broker or Redis that is down raises, wherever it is called from.
UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    ConnectionError,
    TimeoutError,
)


# What Strawberry raises for a request that names no operation it may run (a query sent to
# a subscription transport, no query at all): the caller's mistake, not ours.
WRONG_REQUEST = (InvalidOperationTypeError, CannotGetOperationTypeError, MissingQueryError)


def classify(error: GraphQLError) -> None:
    """Give ``error`` its ``extensions.code``; log what nobody expected."""
    original = error.original_error
    extensions = dict(error.extensions or {})
    if isinstance(original, JobQLError):
        extensions.update(original.extensions)
    elif isinstance(original, UNAVAILABLE):
        logger.warning("service unavailable: %s: %s", type(original).__name__, original)
        error.message = "A backing service (broker or Redis) is unavailable; try again shortly."
        extensions["code"] = ErrorCode.SERVICE_UNAVAILABLE.value
    elif original is not None and (refusal := write_refusal(original)) is not None:
        # Redis answers but refuses writes (memory or disk): no bug here, and no traceback.
        logger.warning("service unavailable: %s", refusal)
        error.message = f"{refusal}; try again shortly."
        extensions["code"] = ErrorCode.SERVICE_UNAVAILABLE.value
    elif isinstance(original, WRONG_REQUEST):
        extensions["code"] = ErrorCode.GRAPHQL_VALIDATION_FAILED.value
    elif original is not None and not isinstance(original, GraphQLError):
        logger.error("unexpected error in %s", error.path, exc_info=original)
        error.message = "Internal server error."
        extensions = {"code": ErrorCode.INTERNAL_SERVER_ERROR.value}
    elif "code" not in extensions:
        extensions["code"] = _request_error_code(error.message).value
        if variable := _VARIABLE_PATH.match(error.message):
            path = "$" + variable.group(1) + (variable.group(2) or "")
            extensions["fields"] = [{"path": path, "message": error.message}]
    error.extensions = extensions


def _request_error_code(message: str) -> ErrorCode:
    if message.startswith("Syntax Error"):
        return ErrorCode.GRAPHQL_PARSE_FAILED
    if message.startswith("Variable '$"):
        return ErrorCode.BAD_USER_INPUT
    return ErrorCode.GRAPHQL_VALIDATION_FAILED


_REQUIRED_FIELD = re.compile(r"required field '(\w+)'|\((\w+):\)' of type")
_VARIABLE_PATH = re.compile(r"Variable '\$(\w+)' (?:has|got) invalid value(?: at (\S+?))?[:;]")


def _value_path(document: DocumentNode, target: Node, message: str) -> str:
    """``input.userId`` for a value node: the argument and object fields leading to it."""
    names: list[str] = []

    class Finder(Visitor):
        def enter(self, node: Node, *args: Any) -> Any:
            if node is target:
                ancestors = [*args[3], args[1]]
                for item in ancestors:
                    if isinstance(item, ArgumentNode | ObjectFieldNode):
                        names.append(item.name.value)
                return BREAK
            return None

    visit(document, Finder())
    if missing := _REQUIRED_FIELD.search(message):
        names.append(missing.group(1) or missing.group(2))
    return ".".join(names)


def _tagged(rule: type[ASTValidationRule]) -> type[ASTValidationRule]:
    """A validation rule whose errors concern argument values: they are bad user input."""

    class Tagged(rule):  # type: ignore[valid-type,misc]
        def report_error(self, error: GraphQLError) -> None:
            extensions: dict[str, Any] = {"code": ErrorCode.BAD_USER_INPUT.value}
            if error.nodes:
                path = _value_path(self.context.document, error.nodes[0], error.message)
                extensions["fields"] = [{"path": path, "message": error.message}]
            error.extensions = {**(error.extensions or {}), **extensions}
            super().report_error(error)

    Tagged.__name__ = rule.__name__
    return Tagged


_INPUT_RULES: dict[type[ASTValidationRule], type[ASTValidationRule]] = {
    rule: _tagged(rule) for rule in (ValuesOfCorrectTypeRule, ProvidedRequiredArgumentsRule)
}


@functools.lru_cache(maxsize=16)
def _rules(
    given: tuple[type[ASTValidationRule], ...], extra: tuple[type[ASTValidationRule], ...]
) -> tuple[type[ASTValidationRule], ...]:
    """One tuple for every operation, not one each: a subscription keeps its own for life."""
    return tuple(_INPUT_RULES.get(rule, rule) for rule in given) + extra


class DocumentCheck(Protocol):
    """Which operations may run at all (:class:`gql.services.trusted.TrustedDocuments`)."""

    def refusal(self, query: str | None, context: Any) -> tuple[type[ASTValidationRule], ...]:
        """No rule for an operation that may run; a rule that refuses it otherwise."""
        ...


class OperationRules(SchemaExtension):
    """What every operation is checked against, set in one hook.

    Wrong-typed or missing arguments are ``BAD_USER_INPUT``, like invalid model input; the
    abuse limits (tokens at parse time; depth and aliases at validation, as ``extra_rules``)
    come from Strawberry's own limiters. One extension rather than one each: every
    extension's hooks run around every operation, a cost the busiest paths showed.
    """

    def __init__(
        self,
        max_tokens: int | None = None,
        extra_rules: Sequence[type[ASTValidationRule]] = (),
        documents: DocumentCheck | None = None,
    ) -> None:
        self.max_tokens = max_tokens
        self.extra_rules = tuple(extra_rules)
        self.documents = documents

    # The parse hook rather than the operation's (validation follows parsing): it ends with
    # its step, while an operation's hook stays suspended (a generator frame, its context
    # manager, Strawberry's wrappers) for as long as a subscription lives.
    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        if self.max_tokens is not None:
            context.parse_options["max_tokens"] = self.max_tokens
        rules = _rules(context.validation_rules, self.extra_rules)
        if self.documents is not None:
            # A refusal is a rule of its own: its own key in the validation cache.
            rules = (*rules, *self.documents.refusal(context.query, context.context))
        context.validation_rules = rules
        yield
