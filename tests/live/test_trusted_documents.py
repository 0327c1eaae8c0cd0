"""Trusted documents: with a manifest configured, only the frontend's shipped operations run,
by id or by text, on every transport; nothing a caller writes runs, nor gets registered. In
development JobQL's GraphiQL page is let through."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from graphql import OperationDefinitionNode, parse, print_ast

from devtools.valkey import EmbeddedValkey
from tests.conftest import GraphQL, running_api, service_env
from tests.support.clients import TRANSPORTS, receive, send, websocket
from tests.support.node import node, node_packages

MODERN = "application/graphql-response+json, application/json;q=0.9"
TASKS = "query Tasks { tasks { name } }"
WATCH = "subscription Watch($id: ID!) { job(id: $id) { id state } }"
FOREIGN = "query Mine { tasks { name description } }"
GRAPHIQL = {"x-jobql-client": "graphiql"}


def sha(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def persisted(digest: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


def code(answer: dict[str, Any]) -> str | None:
    errors = answer.get("errors") or [{}]
    return (errors[0].get("extensions") or {}).get("code")


@pytest.fixture(scope="module")
def api(valkey: EmbeddedValkey, data_dir: Path) -> Iterator[GraphQL]:
    """An API (in development, as a team trying it runs it) that trusts two operations."""
    manifest = data_dir / "persisted-query-manifest.json"
    operations = [
        {"id": sha(body), "body": body, "name": name, "type": kind}
        for body, name, kind in ((TASKS, "Tasks", "query"), (WATCH, "Watch", "subscription"))
    ]
    apollo = {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
    manifest.write_text(json.dumps(apollo))
    env = service_env(
        valkey.url, data_dir, JOBQL_ENV="development", JOBQL_TRUSTED_DOCUMENTS=str(manifest)
    )
    with running_api(env, data_dir) as client:
        yield client


def test_a_shipped_operation_runs_by_its_id_alone_or_by_its_text(api: GraphQL) -> None:
    by_id = api.http.post("/graphql", json={"extensions": persisted(sha(TASKS))})
    assert "generate_report" in {t["name"] for t in by_id.json()["data"]["tasks"]}
    by_get = api.http.get(
        "/graphql",
        params={"extensions": json.dumps(persisted(sha(TASKS)))},
        headers={"apollo-require-preflight": "true"},
    )
    assert by_get.json() == by_id.json()
    assert api.http.post("/graphql", json={"query": TASKS}).json() == by_id.json()


def test_anything_else_is_refused_before_it_runs_and_nothing_is_registered(api: GraphQL) -> None:
    written = api.http.post("/graphql", json={"query": FOREIGN}, headers={"accept": MODERN})
    assert written.status_code == 400 and code(written.json()) == "QUERY_NOT_IN_SAFELIST"
    assert "data" not in written.json()

    unknown = api.http.post("/graphql", json={"extensions": persisted(sha(FOREIGN))})
    assert code(unknown.json()) == "PERSISTED_QUERY_NOT_IN_LIST"

    # An APQ registration (hash and text) is no way in, and leaves nothing behind.
    registering = {"query": FOREIGN, "extensions": persisted(sha(FOREIGN))}
    assert code(api.http.post("/graphql", json=registering).json()) == "QUERY_NOT_IN_SAFELIST"
    again = api.http.post("/graphql", json={"extensions": persisted(sha(FOREIGN))})
    assert code(again.json()) == "PERSISTED_QUERY_NOT_IN_LIST"

    # In a batch each operation is judged alone.
    batch = api.http.post("/graphql", json=[{"query": TASKS}, {"query": FOREIGN}])
    first, second = batch.json()
    assert first["data"]["tasks"] and code(second) == "QUERY_NOT_IN_SAFELIST"


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_every_subscription_transport_runs_only_shipped_operations(
    api: GraphQL, transport: str
) -> None:
    subscribe = TRANSPORTS[transport]
    foreign = "subscription Other($id: ID!) { job(id: $id) { id } }"
    refused = await subscribe(api.base_url, foreign, {"id": "nobody"}, within=10)
    assert code(refused.results[0]) == "QUERY_NOT_IN_SAFELIST", refused.results
    shipped = await subscribe(api.base_url, WATCH, {"id": "nobody"}, within=10)
    assert all(code(result) != "QUERY_NOT_IN_SAFELIST" for result in shipped.results)


async def test_graphiql_s_page_is_let_through_in_development(api: GraphQL) -> None:
    """Its requests are marked (a header; a connection_init field over graphql-ws)."""
    page = api.http.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()
    marked = api.http.post("/graphql", json={"query": FOREIGN}, headers=GRAPHIQL)
    assert marked.json()["data"]["tasks"]
    async with websocket(api.base_url, "graphql-transport-ws") as ws:
        await send(ws, {"type": "connection_init", "payload": GRAPHIQL})
        assert (await receive(ws))["type"] == "connection_ack"
        payload = {"query": FOREIGN}
        await send(ws, {"id": "1", "type": "subscribe", "payload": payload})
        answer = await receive(ws)
    assert answer["type"] == "next" and answer["payload"]["data"]["tasks"], answer


@pytest.mark.slow
def test_apollo_client_sends_the_shipped_operations_by_their_manifest_ids(
    valkey: EmbeddedValkey, data_dir: Path, worker: Any
) -> None:
    """The manifest as Apollo's generator writes it from the e2e operations, and Apollo Client
    with the persisted-query-lists link: by id alone, a query, a mutation and a multipart
    subscription run; a query it never shipped is refused."""
    e2e = node_packages()
    # The generator takes one operation per document, as a frontend's source holds them.
    sources = data_dir / "operations"
    sources.mkdir(exist_ok=True)
    for operation in parse((e2e / "operations.graphql").read_text()).definitions:
        assert isinstance(operation, OperationDefinitionNode) and operation.name is not None
        (sources / f"{operation.name.value}.graphql").write_text(print_ast(operation))
    config = data_dir / "persisted-query-manifest.config.json"
    manifest = data_dir / "apollo-manifest.json"
    config.write_text(json.dumps({"documents": [f"{sources}/*.graphql"], "output": str(manifest)}))
    subprocess.run(
        ["npx", "--no-install", "generate-persisted-query-manifest", "--config", str(config)],
        cwd=e2e, check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    env = service_env(valkey.url, data_dir, JOBQL_TRUSTED_DOCUMENTS=str(manifest))
    with running_api(env, data_dir) as trusting:
        run = {
            **os.environ,
            "JOBQL_URL": f"{trusting.base_url}/graphql",
            "JOBQL_MANIFEST": str(manifest),
        }
        seen = json.loads(node("trusted.e2e.mjs", env=run))
    assert "generate_report" in seen["tasks"]
    assert seen["multipart"][-1] == "SUCCESS", seen
    assert seen["sent"] and all(s == {"hasQuery": False, "hasId": True} for s in seen["sent"])
    assert seen["foreign"] == "QUERY_NOT_IN_SAFELIST"
