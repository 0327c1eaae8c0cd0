"""What Apollo Client expects of /graphql beyond the stock view: the GraphQL-over-HTTP media
type and status codes, automatic persisted queries (shared by every replica) and batches."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from devtools.valkey import EmbeddedValkey
from tests.conftest import GraphQL, running_api, service_env

MODERN = "application/graphql-response+json, application/json;q=0.9"
SECRET = secrets.token_urlsafe(48)
RATE = 3
ENQUEUE = 'mutation { enqueue(task: "process_data", input: {data: 1, delay: 0}) { id } }'


def sha(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()


def persisted(digest: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": digest}}


async def test_a_modern_client_gets_the_graphql_response_media_type_and_spec_statuses(
    async_api: Any,
) -> None:
    http: httpx.AsyncClient = async_api.http
    ok = await http.post(
        "/graphql", json={"query": "{ tasks { name } }"}, headers={"accept": MODERN}
    )
    assert ok.status_code == 200
    assert ok.headers["content-type"].startswith("application/graphql-response+json")

    broken = await http.post(
        "/graphql", json={"query": "{ tasks { nme } }"}, headers={"accept": MODERN}
    )
    assert broken.status_code == 400, "a request that never executed is a 4xx"
    assert "data" not in broken.json() and broken.json()["errors"]

    legacy = await http.post("/graphql", json={"query": "{ tasks { nme } }"})
    assert legacy.status_code == 200, "application/json answers GraphQL errors with 200"
    assert legacy.headers["content-type"].startswith("application/json")

    executed = await http.post(
        "/graphql", json={"query": '{ job(id: "nobody") { id } }'}, headers={"accept": MODERN}
    )
    assert executed.status_code == 200 and executed.json() == {"data": {"job": None}}


@pytest.mark.parametrize("method", ["POST", "GET"])
async def test_a_persisted_query_is_asked_for_then_sent_by_its_hash_alone(
    async_api: Any, method: str
) -> None:
    http: httpx.AsyncClient = async_api.http
    query = f"query Tasks{method} {{ tasks {{ name }} }}"
    digest = sha(query)

    async def call(**payload: Any) -> httpx.Response:
        if method == "POST":
            return await http.post("/graphql", json=payload)
        params = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in payload.items()}
        # A GET must not be a "simple" cross-site request (CSRF prevention).
        preflight = {"apollo-require-preflight": "true"}
        return await http.get("/graphql", params=params, headers=preflight)

    miss = await call(extensions=persisted(digest))
    assert miss.status_code == 200
    assert miss.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert miss.json()["errors"][0]["message"] == "PersistedQueryNotFound"

    registered = await call(query=query, extensions=persisted(digest))
    assert "generate_report" in {t["name"] for t in registered.json()["data"]["tasks"]}

    by_hash = await call(extensions=persisted(digest))
    assert by_hash.json() == registered.json()

    forged = await call(query="{ health { ok } }", extensions=persisted(digest))
    assert forged.status_code == 400
    assert forged.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_a_batch_is_answered_by_an_array_in_order(async_api: Any) -> None:
    http: httpx.AsyncClient = async_api.http
    batch = [
        {"query": "{ tasks { name } }"},
        {"query": "query($id: ID!) { job(id: $id) { id } }", "variables": {"id": "nobody"}},
        {"query": "{ nope }"},
        {"query": 1},
        {"extensions": persisted("0" * 64)},
    ]
    answer = await http.post("/graphql", json=batch, headers={"accept": MODERN})
    assert answer.status_code == 200
    first, second, third, fourth, fifth = answer.json()
    assert first["data"]["tasks"] and second == {"data": {"job": None}}
    assert third["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert fourth["errors"][0]["extensions"]["code"] == "BAD_REQUEST", "one bad item, alone"
    assert fifth["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"

    for refused in ([], [1], [{"query": "{ tasks { name } }"}] * 11):
        whole = await http.post("/graphql", json=refused, headers={"accept": MODERN})
        assert whole.status_code == 400, refused
        assert whole.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
        assert whole.headers["content-type"].startswith("application/graphql-response+json")

    too_many = await http.post("/graphql", json=[{"query": "{ tasks { name } }"}] * 11)
    assert too_many.status_code == 400
    assert "1 to 10 operations" in too_many.json()["errors"][0]["message"]


@pytest.fixture(scope="module")
def replicas(valkey: EmbeddedValkey, data_dir: Path, worker: Any) -> Iterator[tuple[str, str]]:
    """Two API processes with authentication on and a small mutation rate."""
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_AUTH_MODE="jwt",
        JOBQL_JWT_SECRET=SECRET,
        JOBQL_RATE_LIMIT_MUTATIONS=str(RATE),
        JOBQL_RATE_LIMIT_WINDOW_SECONDS="30",
    )
    with running_api(env, data_dir) as one, running_api(env, data_dir) as two:
        yield one.base_url, two.base_url


def bearer(sub: str) -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")
    return {"authorization": f"Bearer {token}"}


@pytest.mark.slow
def test_a_query_persisted_on_one_replica_is_known_to_the_other(
    replicas: tuple[str, str],
) -> None:
    one, two = (GraphQL(base) for base in replicas)
    query = "query OnBoth { tasks { name } }"
    auth = bearer(f"user-{secrets.token_hex(4)}")
    extensions = persisted(sha(query))
    first = one.http.post("/graphql", json={"query": query, "extensions": extensions}, headers=auth)
    assert first.json()["data"]["tasks"]
    second = two.http.post("/graphql", json={"extensions": extensions}, headers=auth)
    assert second.json() == first.json()


@pytest.mark.slow
def test_every_operation_of_a_batch_counts_against_the_mutation_rate(
    replicas: tuple[str, str],
) -> None:
    client = GraphQL(replicas[0])
    auth = bearer(f"user-{secrets.token_hex(4)}")
    answer = client.http.post("/graphql", json=[{"query": ENQUEUE}] * (RATE + 2), headers=auth)
    codes = [
        item["errors"][0]["extensions"]["code"] if item.get("errors") else "OK"
        for item in answer.json()
    ]
    assert codes.count("OK") == RATE and codes.count("RATE_LIMITED") == 2, codes
    assert client.http.post("/graphql", json=[{"query": ENQUEUE}]).status_code == 401
