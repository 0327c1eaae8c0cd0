"""The shape and status of ``/graphql``'s answers, as the GraphQL-over-HTTP spec and Apollo Client
expect them. A client that accepts ``application/graphql-response+json`` gets that media type,
and then an answer without ``data`` (the request failed before execution) has a 4xx/5xx status
by its first error's code; a client asking for ``application/json`` gets 200 for every GraphQL
error, as that media type requires. A malformed request is 400 under either: its status is set
where it is found to be malformed.
"""

from __future__ import annotations

import json
from typing import Any

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json; charset=utf-8"
APPLICATION_JSON = "application/json"
BAD_REQUEST = "BAD_REQUEST"
# An answer without data: its status by the first error's code (otherwise 400).
_STATUS_BY_CODE = {
    "UNAUTHENTICATED": 401,
    "FORBIDDEN": 403,
    "RATE_LIMITED": 429,
    "SERVICE_UNAVAILABLE": 503,
    "INTERNAL_SERVER_ERROR": 500,
}
# A request refused whole by the HTTP layer: the code its status stands for.
CODE_BY_STATUS = {
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    503: "SERVICE_UNAVAILABLE",
}


def media_type(modern: bool) -> bytes:
    return (GRAPHQL_RESPONSE_JSON if modern else APPLICATION_JSON).encode()


def error_body(message: str, code: str) -> bytes:
    return json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()


def status_of(answer: dict[str, Any] | list[Any], modern: bool) -> int:
    """The status of a processed answer (a batch's is always 200: each item has its own)."""
    if isinstance(answer, list) or "data" in answer:
        return 200
    errors = answer.get("errors") or [{}]
    code = (errors[0].get("extensions") or {}).get("code")
    return _STATUS_BY_CODE.get(code or "", 400) if modern else 200
