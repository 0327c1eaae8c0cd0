"""A request's head is read once, and what the later steps need is in it."""

from __future__ import annotations

from typing import Any

from gql.http.head import HEAD, read_head
from gql.http.responses import status_of


def scope(headers: dict[str, str], method: str = "POST", query: bytes = b"") -> dict[str, Any]:
    raw = [(k.encode(), v.encode()) for k, v in headers.items()]
    return {"type": "http", "method": method, "headers": raw, "query_string": query}


def test_one_pass_gives_every_later_step_what_it_needs() -> None:
    request = scope(
        {
            "accept": "application/graphql-response+json, application/json;q=0.9",
            "content-length": "42",
            "content-type": "application/json",
            "authorization": "Bearer abc",
            "apollo-require-preflight": "true",
            "x-request-id": "client-7",
        }
    )
    head = read_head(request)
    assert request[HEAD] is head
    assert head.request_id == "client-7" and head.transport == "http"
    assert head.graphql_response and head.preflighted and not head.ide
    assert (head.content_length, head.content_type) == (42, b"application/json")
    assert head.credential == "Bearer abc"


def test_an_insane_request_id_is_replaced_and_a_stream_is_named() -> None:
    head = read_head(scope({"x-request-id": "a b\\n", "accept": "multipart/mixed"}))
    assert head.request_id != "a b\\n" and head.streams and head.transport == "multipart"
    assert read_head(scope({"accept": "text/event-stream"})).transport == "sse"
    assert read_head(scope({})).content_length == -1, "no length: counted as it arrives"


def test_graphiql_s_page_is_a_get_without_an_operation() -> None:
    assert read_head(scope({}, "GET")).ide
    assert not read_head(scope({}, "GET", b"query=%7Btasks%7D")).ide
    assert not read_head(scope({}, "GET", b"extensions=%7B%7D")).ide, "a persisted query's hash"


def test_status_by_media_type() -> None:
    refused = {"errors": [{"message": "no", "extensions": {"code": "UNAUTHENTICATED"}}]}
    assert status_of(refused, modern=True) == 401
    assert status_of(refused, modern=False) == 200, "application/json: 200 for GraphQL errors"
    assert status_of({"errors": [{"message": "?"}]}, modern=True) == 400
    assert status_of({"data": None, "errors": [{"message": "late"}]}, modern=True) == 200
    assert status_of([refused], modern=True) == 200, "a batch's items carry their own"
