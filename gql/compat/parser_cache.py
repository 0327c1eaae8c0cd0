"""Strawberry's ``ParserCache``, with a syntax error left where Strawberry reports it: Strawberry
0.341.2's hook parses before the ``try`` that turns a ``GraphQLError`` into an answer, so a
multipart or SSE request whose query did not parse cut the client's already-started stream (found
by ``tests/faults/test_fuzz.py``). Here a document that does not parse is neither cached nor set,
and Strawberry parses it again inside its guard to answer ``GRAPHQL_PARSE_FAILED``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from graphql import GraphQLError
from strawberry.extensions import ParserCache


class ReportingParserCache(ParserCache):
    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):  # reported by Strawberry's parse, guarded
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        yield
