"""The trusted documents' manifest, read as Apollo writes it, and the rule that refuses the
rest: GraphiQL's mark lets an operation through in development only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request

from gql.schema.root import build_schema
from gql.services.persisted import PersistedQueryError
from gql.services.trusted import TrustedDocuments
from tasks.core.app import registry
from tasks.core.settings import Settings

SHIPPED = "query Shipped { __typename }"


def manifest(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "persisted-query-manifest.json"
    path.write_text(json.dumps(content))
    return path


def trusted(*, graphiql_exempt: bool = False) -> TrustedDocuments:
    shipped = {hashlib.sha256(SHIPPED.encode()).hexdigest(): SHIPPED}
    return TrustedDocuments(shipped, graphiql_exempt=graphiql_exempt)


def test_apollo_s_manifest_is_read_and_anything_else_is_a_clear_error(tmp_path: Path) -> None:
    digest = hashlib.sha256(SHIPPED.encode()).hexdigest()
    apollo = {
        "format": "apollo-persisted-query-manifest",
        "version": 1,
        "operations": [{"id": digest, "body": SHIPPED, "name": "Shipped", "type": "query"}],
    }
    documents = TrustedDocuments.load(manifest(tmp_path, apollo))
    assert len(documents) == 1 and documents.allows(SHIPPED)
    assert not documents.allows("query Other { __typename }")
    for broken, reason in (
        ({"operations": []}, "is not an apollo-persisted-query-manifest"),
        ({**apollo, "version": 2}, "only version 1"),
        ({**apollo, "operations": [{"id": digest}]}, "without id/body"),
    ):
        with pytest.raises(ValueError, match=reason):
            TrustedDocuments.load(manifest(tmp_path, broken))
    with pytest.raises(ValueError, match="cannot read"):
        TrustedDocuments.load(tmp_path / "missing.json")


async def test_an_id_gives_its_text_and_an_unknown_one_is_not_in_the_list() -> None:
    documents = trusted()
    digest = hashlib.sha256(SHIPPED.encode()).hexdigest()
    assert await documents.resolve(digest, None) == SHIPPED
    with pytest.raises(PersistedQueryError) as unknown:
        await documents.resolve("0" * 64, None)
    assert unknown.value.code == "PERSISTED_QUERY_NOT_IN_LIST"


class Caller:
    """What the rule reads of a context: the request's headers."""

    def __init__(self, headers: dict[str, str]) -> None:
        raw = [(k.encode(), v.encode()) for k, v in headers.items()]
        self.request = Request({"type": "http", "headers": raw})
        self.connection_params = None


@pytest.mark.parametrize("let_through", [True, False])
async def test_graphiql_s_mark_counts_only_where_it_is_let_through(let_through: bool) -> None:
    """``gql.app`` lets it through in development only; in production it is refused."""
    documents = trusted(graphiql_exempt=let_through)
    schema = build_schema(registry, Settings(env="test"), trusted=documents)
    marked = Caller({"x-jobql-client": "graphiql"})
    foreign = await schema.execute("query Foreign { __typename }", context_value=marked)
    assert (foreign.errors is None) is let_through
    if foreign.errors:
        assert foreign.errors[0].extensions == {"code": "QUERY_NOT_IN_SAFELIST"}
    shipped = await schema.execute(SHIPPED, context_value=Caller({}))
    assert shipped.errors is None and shipped.data == {"__typename": "Query"}
    unmarked = await schema.execute("query Foreign { __typename }", context_value=Caller({}))
    assert unmarked.errors and unmarked.errors[0].extensions == {"code": "QUERY_NOT_IN_SAFELIST"}
