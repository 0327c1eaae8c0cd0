"""Trusted documents: with ``JOBQL_TRUSTED_DOCUMENTS`` naming a manifest, only the operations in
it run, on every transport. The manifest is Apollo's ``persisted-query-manifest.json`` (as
``@apollo/generate-persisted-query-manifest`` writes it from a frontend's source): a client sends
an operation's id alone (Apollo's persisted-query link with the manifest's ids) or its full text,
which must be one of the manifest's. Nothing is registered at run time, so a caller can run
only what the frontend team shipped: the strongest of the abuse limits, since an attacker cannot
write a query of their own. In development GraphiQL's own page is let through (it marks its
requests), so the API stays explorable there; in production it runs the manifest's operations
like any client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from graphql import BREAK, ASTValidationRule, GraphQLError

from gql.services.persisted import PersistedQueryError

MANIFEST_FORMAT = "apollo-persisted-query-manifest"
# The codes Apollo's router answers with, which Apollo's clients know.
NOT_IN_LIST = "PERSISTED_QUERY_NOT_IN_LIST"
NOT_IN_SAFELIST = "QUERY_NOT_IN_SAFELIST"
# What JobQL's GraphiQL page sends, as a header and in graphql-ws's connection_init.
GRAPHIQL_MARK = "x-jobql-client"
GRAPHIQL = "graphiql"


class TrustedDocuments:
    """The manifest's operations by id, and their texts."""

    def __init__(self, operations: Mapping[str, str], *, graphiql_exempt: bool = False) -> None:
        self._by_id = dict(operations)
        self._texts = frozenset(operations.values())
        self.graphiql_exempt = graphiql_exempt

    @classmethod
    def load(cls, *paths: Path, graphiql_exempt: bool = False) -> TrustedDocuments:
        """The operations of every manifest at ``paths`` (the deployment's, and the built
        dashboard's); a clear error when one is not a manifest."""
        operations: dict[str, str] = {}
        for path in paths:
            operations.update(_operations(path))
        return cls(operations, graphiql_exempt=graphiql_exempt)

    def __len__(self) -> int:
        return len(self._by_id)

    def allows(self, query: str) -> bool:
        """The text is one of the manifest's (as sent, or by its sha256 as an id)."""
        return query in self._texts or hashlib.sha256(query.encode()).hexdigest() in self._by_id

    def refusal(self, query: str | None, context: Any) -> tuple[type[ASTValidationRule], ...]:
        """For :class:`gql.services.errors.OperationRules`: nothing for an operation that may
        run, else the rule that refuses it at validation, before it runs."""
        if query is not None and self.allows(query):
            return ()
        if self.graphiql_exempt and _from_graphiql(context):
            return ()
        return (UntrustedDocument,)

    async def resolve(self, digest: str, query: Any) -> str:
        """The text to run for a persisted-query request: the manifest's for an id alone; a
        text sent with its hash is checked when it runs, like any text (never registered)."""
        if isinstance(query, str) and query:
            if hashlib.sha256(query.encode()).hexdigest() != digest:
                raise PersistedQueryError("provided sha does not match query", "BAD_REQUEST")
            return query
        known = self._by_id.get(digest)
        if known is None:
            raise PersistedQueryError("the operation is not in the trusted documents", NOT_IN_LIST)
        return known


def _operations(path: Path) -> dict[str, str]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"JOBQL_TRUSTED_DOCUMENTS: cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"JOBQL_TRUSTED_DOCUMENTS: {path} is not an {MANIFEST_FORMAT}")
    if manifest.get("version") != 1:
        raise ValueError(f"JOBQL_TRUSTED_DOCUMENTS: {path}: only version 1 is known")
    operations: dict[str, str] = {}
    for entry in manifest.get("operations") or []:
        if not (isinstance(entry, dict) and _strings(entry, "id", "body")):
            raise ValueError(f"JOBQL_TRUSTED_DOCUMENTS: {path}: an operation without id/body")
        operations[entry["id"]] = entry["body"]
    return operations


def _strings(entry: dict[str, Any], *names: str) -> bool:
    return all(isinstance(entry.get(name), str) and entry[name] for name in names)


class UntrustedDocument(ASTValidationRule):
    """Refuses the operation, first of its validation errors, on every transport."""

    def enter_document(self, *_: Any) -> Any:
        message = "this operation is not in the trusted documents: only shipped operations run"
        self.report_error(GraphQLError(message, extensions={"code": NOT_IN_SAFELIST}))
        return BREAK


def _from_graphiql(context: Any) -> bool:
    """The request came from JobQL's GraphiQL page, which marks its requests (a header over
    HTTP, a connection_init field over graphql-ws)."""
    request = getattr(context, "request", None)
    if request is not None and request.headers.get(GRAPHIQL_MARK) == GRAPHIQL:
        return True
    params = getattr(context, "connection_params", None)
    return isinstance(params, dict) and params.get(GRAPHIQL_MARK) == GRAPHIQL
