"""Strawberry's ``ParserCache``, with a syntax error left where Strawberry reports it.

Strawberry 0.341.2's ``ParserCache.on_parse`` parses in the hook itself, before the
``try`` that turns a ``GraphQLError`` into an answer. Over HTTP that path has a second
guard, but a multipart or SSE request whose query does not parse raised out of the
already-started stream: the client saw its connection cut (found by the fuzz in
``tests/faults/test_fuzz.py``). Here a document that does not parse is not cached and not set,
so Strawberry parses it again inside its guard and answers ``GRAPHQL_PARSE_FAILED``.
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
