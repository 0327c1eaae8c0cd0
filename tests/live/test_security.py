"""The adversarial suite: a real API with authentication on, attacked as outsiders would.

Each attack asserts the exact ``extensions.code`` (or WebSocket close code) it gets, and
that no job was created or changed. Two API processes share the session's Valkey and
worker, so the mutation rate is proven to hold across replicas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import pickle
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from websockets.exceptions import ConnectionClosed, InvalidStatus

from devtools.valkey import EmbeddedValkey
from tasks.core.messages import task_message
from tests.conftest import JOB, GraphQL, running_api, service_env
from tests.support.clients import (
    LEGACY_WS,
    TRANSPORT_WS,
    TRANSPORTS,
    WsProtocol,
    receive,
    send,
    websocket,
)

pytestmark = pytest.mark.slow

SECRET = secrets.token_urlsafe(48)
API_KEY = secrets.token_urlsafe(32)
ISSUER, AUDIENCE = "https://id.jobql.test", "jobql"
ALLOWED_ORIGIN = "https://app.jobql.test"
RATE, WINDOW = 5, 2.0
ENQUEUE = (
    "mutation($i: JSON!, $o: EnqueueOptions) "
    '{ enqueue(task: "process_data", input: $i, options: $o) { id state sequence } }'
)
CANCEL = "mutation($id: ID!) { cancelJob(id: $id) { id state } }"
RETRY = "mutation($id: ID!) { retryJob(id: $id) { id state } }"
MINE = "{ jobs(first: 100) { edges { node { id state } } } }"
BULK_CANCEL = "mutation($f: JobFilter!) { cancelJobs(filter: $f) { examined cancelled } }"
BULK_RETRY = (
    "mutation($f: JobFilter!) { retryJobs(filter: $f) { examined retried { id retryId } } }"
)
WATCH = "subscription($id: ID!) { job(id: $id) { id state } }"
FIREHOSE = "subscription { jobs { id state } }"
EVERY_OWNER = "subscription { jobs { id owner state } }"
WORKFLOW_READ = "query($id: ID!) { workflow(id: $id) { id } }"
WORKFLOW_WATCH = 'subscription { workflow(id: "no-such-workflow") { id state } }'


def mint(sub: str, *, key: str = SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=algorithm)


def bearer(sub: str, **claims: Any) -> str:
    return f"Bearer {mint(sub, **claims)}"


def someone() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def secure_env(valkey: EmbeddedValkey, data_dir: Path) -> dict[str, str]:
    return service_env(
        valkey.url,
        data_dir,
        JOBQL_AUTH_MODE="jwt,api_key",
        JOBQL_JWT_SECRET=SECRET,
        JOBQL_JWT_ISSUER=ISSUER,
        JOBQL_JWT_AUDIENCE=AUDIENCE,
        JOBQL_API_KEYS=json.dumps({hashlib.sha256(API_KEY.encode()).hexdigest(): "service-key"}),
        JOBQL_CORS_ORIGINS=json.dumps([ALLOWED_ORIGIN]),
        JOBQL_RATE_LIMIT_MUTATIONS=str(RATE),
        JOBQL_RATE_LIMIT_WINDOW_SECONDS=str(WINDOW),
        JOBQL_MAX_SUBSCRIPTIONS_PER_CONNECTION="2",
        JOBQL_MAX_SUBSCRIPTIONS_PER_OWNER="3",
        JOBQL_MAX_INPUT_BYTES="10000",
    )


@pytest.fixture(scope="module")
def replicas(secure_env: dict[str, str], data_dir: Path, worker: Any) -> Iterator[tuple[str, str]]:
    """Two API processes with authentication on: their base URLs."""
    with running_api(secure_env, data_dir) as one, running_api(secure_env, data_dir) as two:
        yield one.base_url, two.base_url


@pytest.fixture
def base(replicas: tuple[str, str]) -> str:
    return replicas[0]


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield client


async def call(
    http: httpx.AsyncClient, authorization: str | None, query: str, **variables: Any
) -> httpx.Response:
    headers = {"authorization": authorization} if authorization else {}
    return await http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )


async def ok(http: httpx.AsyncClient, authorization: str, query: str, **variables: Any) -> Any:
    response = await call(http, authorization, query, **variables)
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


async def refused(
    http: httpx.AsyncClient, authorization: str, query: str, **variables: Any
) -> dict[str, Any]:
    response = await call(http, authorization, query, **variables)
    assert response.status_code == 200, response.text
    errors = response.json()["errors"]
    assert len(errors) == 1, errors
    return dict(errors[0])


async def jobs_of(http: httpx.AsyncClient, owner: str) -> list[dict[str, Any]]:
    data = await ok(http, bearer(owner), MINE)
    return [edge["node"] for edge in data["jobs"]["edges"]]


async def waiting_job(http: httpx.AsyncClient, owner: str) -> dict[str, Any]:
    """A job that stays PENDING for the test's length (its countdown is a minute)."""
    data = await ok(http, bearer(owner), ENQUEUE, i={"data": 1}, o={"countdown": 60})
    return dict(data["enqueue"])


# --- per-owner isolation -------------------------------------------------------------------


async def test_another_owners_job_cannot_be_read_cancelled_or_retried(
    http: httpx.AsyncClient,
) -> None:
    alice, bob = someone(), someone()
    job = await waiting_job(http, alice)
    unknown = str(uuid.uuid4())
    assert (await ok(http, bearer(bob), JOB, id=job["id"]))["job"] is None
    for mutation in (CANCEL, RETRY):
        theirs = await refused(http, bearer(bob), mutation, id=job["id"])
        nothing = await refused(http, bearer(bob), mutation, id=unknown)
        assert theirs["extensions"]["code"] == nothing["extensions"]["code"] == "NOT_FOUND"
        assert theirs["message"].replace(job["id"], unknown) == nothing["message"]
    assert await jobs_of(http, bob) == []
    seen = (await ok(http, bearer(alice), JOB, id=job["id"]))["job"]
    assert (seen["state"], seen["sequence"]) == ("PENDING", job["sequence"])
    assert [j["id"] for j in await jobs_of(http, alice)] == [job["id"]]


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_another_owners_job_cannot_be_watched(
    http: httpx.AsyncClient, base: str, transport: str
) -> None:
    job = await waiting_job(http, someone())
    stream = await TRANSPORTS[transport](
        base, WATCH, {"id": job["id"]}, within=20, authorization=bearer(someone())
    )
    assert stream.jobs == []
    assert [e["extensions"]["code"] for e in stream.errors] == ["NOT_FOUND"]


async def test_an_admin_sees_and_touches_every_owners_jobs(http: httpx.AsyncClient) -> None:
    alice = someone()
    job = await waiting_job(http, alice)
    admin = bearer(someone(), scope="jobql:admin")
    assert (await ok(http, admin, JOB, id=job["id"]))["job"]["id"] == job["id"]
    listed = await ok(http, admin, MINE)
    assert job["id"] in [edge["node"]["id"] for edge in listed["jobs"]["edges"]]
    cancelled = await ok(http, admin, CANCEL, id=job["id"])
    assert cancelled["cancelJob"]["state"] == "REVOKED"
    retried = await ok(http, admin, RETRY, id=job["id"])
    assert retried["retryJob"]["id"] in {j["id"] for j in await jobs_of(http, alice)}


async def test_viewer_says_who_is_asking_and_workflows_list_each_owners_own(
    http: httpx.AsyncClient,
) -> None:
    """A dashboard's first question, and its workflow list: owners see their own, an admin
    every owner's."""
    alice, bob, boss = someone(), someone(), someone()
    admin = bearer(boss, scope="jobql:admin")
    assert (await ok(http, bearer(alice), "{ viewer { owner admin } }"))["viewer"] == {
        "owner": alice,
        "admin": False,
    }
    assert (await ok(http, admin, "{ viewer { owner admin } }"))["viewer"] == {
        "owner": boss,
        "admin": True,
    }
    run = (
        "mutation { runWorkflow(input: "
        '{root: {task: {name: "process_data", input: {data: 1}}}}) { id } }'
    )
    made = {who: (await ok(http, bearer(who), run))["runWorkflow"]["id"] for who in (alice, bob)}
    listing = (
        "query($after: String) { workflows(first: 1, after: $after) "
        "{ edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }"
    )
    page = (await ok(http, bearer(alice), listing))["workflows"]
    assert [e["node"]["id"] for e in page["edges"]] == [made[alice]]
    assert not page["pageInfo"]["hasNextPage"]
    seen: list[str] = []
    after = None
    while True:
        page = (await ok(http, admin, listing, after=after))["workflows"]
        seen += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen.index(made[bob]) < seen.index(made[alice]), "newest first, over every owner"
    assert (await ok(http, admin, WORKFLOW_READ, id=made[bob]))["workflow"]["id"] == made[bob]
    assert (await ok(http, bearer(alice), WORKFLOW_READ, id=made[bob]))["workflow"] is None


async def test_bulk_controls_reach_the_callers_jobs_and_an_admins_every_owners(
    http: httpx.AsyncClient,
) -> None:
    alice, bob = someone(), someone()
    since = datetime.now(UTC).isoformat()
    mine = {owner: (await waiting_job(http, owner))["id"] for owner in (alice, bob)}
    window = {"createdAfter": since, "createdBefore": datetime.now(UTC).isoformat()}

    bobs = (await ok(http, bearer(bob), BULK_CANCEL, f=window))["cancelJobs"]
    assert bobs == {"examined": 1, "cancelled": [mine[bob]]}
    assert (await ok(http, bearer(alice), JOB, id=mine[alice]))["job"]["state"] == "PENDING"
    admin = bearer(someone(), scope="jobql:admin")
    everyone = (await ok(http, admin, BULK_CANCEL, f=window))["cancelJobs"]
    assert everyone == {"examined": 2, "cancelled": [mine[alice]]}

    assert (await ok(http, bearer(bob), BULK_RETRY, f=window))["retryJobs"]["examined"] == 1
    retried = (await ok(http, admin, BULK_RETRY, f=window))["retryJobs"]["retried"]
    assert [r["id"] for r in retried] == [mine[alice]], "bob's job was retried by bob already"
    assert retried[0]["retryId"] in {j["id"] for j in await jobs_of(http, alice)}


async def test_the_firehose_shows_an_owner_theirs_alone_and_an_admin_everyones(
    http: httpx.AsyncClient, replicas: tuple[str, str]
) -> None:
    """Each owner's ``jobs`` stream hears only their own jobs; an admin's, on the other
    replica, hears every owner's, each event naming its owner."""
    alice, bob, admin = someone(), someone(), someone()
    seen: dict[str, dict[str, str]] = {alice: {}, bob: {}, admin: {}}
    streams = [
        asyncio.create_task(
            TRANSPORTS["graphql-transport-ws"](
                base, EVERY_OWNER, {}, within=60, authorization=authorization,
                on_result=lambda r, watcher=watcher: seen[watcher].setdefault(
                    r["data"]["jobs"]["id"], r["data"]["jobs"]["owner"]
                ),
            )
        )
        for watcher, base, authorization in (
            (alice, replicas[0], bearer(alice)),
            (bob, replicas[0], bearer(bob)),
            (admin, replicas[1], bearer(admin, scope="jobql:admin")),
        )
    ]  # fmt: skip
    await asyncio.sleep(1.0)
    mine = {owner: (await waiting_job(http, owner))["id"] for owner in (alice, bob)}
    for _ in range(200):
        if all(seen[alice].values()) and set(mine.values()) <= set(seen[admin]) and seen[bob]:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    for stream in streams:
        stream.cancel()
    assert seen[alice] == {mine[alice]: alice}
    assert seen[bob] == {mine[bob]: bob}
    assert {job: seen[admin].get(job) for job in mine.values()} == {
        mine[alice]: alice,
        mine[bob]: bob,
    }


# --- credentials ----------------------------------------------------------------------------

VICTIM = someone()
BAD_CREDENTIALS = {
    "missing": None,
    "malformed": "Bearer not-a-jwt-at-all",
    "expired": bearer(VICTIM, exp=int(time.time()) - 60),
    "not yet valid": bearer(VICTIM, nbf=int(time.time()) + 3600),
    "wrong audience": bearer(VICTIM, aud="another-api"),
    "wrong issuer": bearer(VICTIM, iss="https://evil.test"),
    "wrong signature": f"Bearer {mint(VICTIM, key=secrets.token_urlsafe(48))}",
    "alg none": "Bearer "
    + jwt.encode({"sub": VICTIM, "iss": ISSUER, "aud": AUDIENCE, "exp": 2**31}, None, "none"),
    "bad api key": f"ApiKey {secrets.token_urlsafe(32)}",
}


@pytest.mark.parametrize("case", sorted(BAD_CREDENTIALS))
async def test_a_bad_credential_over_http_is_unauthenticated(
    http: httpx.AsyncClient, case: str
) -> None:
    response = await call(http, BAD_CREDENTIALS[case], ENQUEUE, i={"data": 1})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert await jobs_of(http, VICTIM) == []


@pytest.mark.parametrize("case", sorted(BAD_CREDENTIALS))
async def test_a_bad_credential_over_websockets_is_refused_before_any_operation(
    http: httpx.AsyncClient, base: str, case: str
) -> None:
    credential = BAD_CREDENTIALS[case]
    init = {"Authorization": credential} if credential else {}
    subscribe = {"query": "subscription { jobs { id } }", "variables": {}}
    async with websocket(base, "graphql-transport-ws") as ws:
        await send(ws, {"type": "connection_init", "payload": init})
        with pytest.raises(ConnectionClosed):
            await receive(ws)
            await send(ws, {"id": "1", "type": "subscribe", "payload": subscribe})
            await receive(ws)
    assert ws.close_code == 4403
    async with websocket(base, "graphql-ws") as ws:
        await send(ws, {"type": "connection_init", "payload": init})
        message = await receive(ws)
        assert message["type"] == "connection_error"
        assert message["payload"]["code"] == "UNAUTHENTICATED"
    assert await jobs_of(http, VICTIM) == []


async def test_a_websocket_may_authenticate_with_its_upgrade_headers_or_an_api_key(
    base: str,
) -> None:
    for headers, init in (
        ({"Authorization": bearer(someone())}, {}),
        ({}, {"Authorization": f"ApiKey {API_KEY}"}),
    ):
        async with websocket(base, "graphql-transport-ws", additional_headers=headers) as ws:
            await send(ws, {"type": "connection_init", "payload": init})
            assert (await receive(ws))["type"] == "connection_ack"


async def test_an_operation_before_connection_init_closes_the_socket(base: str) -> None:
    async with websocket(base, "graphql-transport-ws") as ws:
        await send(ws, {"id": "1", "type": "subscribe", "payload": {"query": FIREHOSE}})
        with pytest.raises(ConnectionClosed):
            await receive(ws)
    assert ws.close_code == 4401


async def _watch_until_closed(
    base: str, protocol: WsProtocol, authorization: str
) -> tuple[list[dict[str, Any]], int | None, float]:
    """A firehose on a socket of ``protocol``: what the server sent, its close code, when."""
    messages: list[dict[str, Any]] = []
    async with websocket(base, protocol.subprotocol) as ws:
        await send(ws, {"type": "connection_init", "payload": {"Authorization": authorization}})
        assert (await receive(ws))["type"] == "connection_ack"
        await send(ws, {"id": "1", "type": protocol.start, "payload": {"query": FIREHOSE}})
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(10):
                while True:
                    messages.append(await receive(ws))
    return [m for m in messages if m["type"] != protocol.keep_alive], ws.close_code, time.time()


async def test_a_token_that_expires_closes_its_sockets_when_it_expires(base: str) -> None:
    """Each operation gets UNAUTHENTICATED and the socket closes with 4403, on both
    protocols, at the token's expiry (no event of the caller's jobs needed to notice)."""
    expires_at = int(time.time()) + 2
    expiring = bearer(someone(), exp=expires_at)
    (modern, modern_code, modern_at), (legacy, legacy_code, legacy_at) = await asyncio.gather(
        _watch_until_closed(base, TRANSPORT_WS, expiring),
        _watch_until_closed(base, LEGACY_WS, expiring),
    )
    unauthenticated = {"message": "the token expired", "extensions": {"code": "UNAUTHENTICATED"}}
    assert modern == [{"id": "1", "type": "error", "payload": [unauthenticated]}]
    assert modern_code == 4403
    # The legacy protocol has no close codes of its own: the operation's error (Strawberry
    # may add the operation's end as it stops it), then the connection's error as at a
    # refused init, and the same 4403.
    assert legacy[0] == {"id": "1", "type": "error", "payload": unauthenticated}
    assert all(m == {"id": "1", "type": "complete"} for m in legacy[1:-1]), legacy
    assert legacy[-1] == {
        "type": "connection_error",
        "payload": {"message": "the token expired", "code": "UNAUTHENTICATED"},
    }
    assert legacy_code == 4403
    for closed_at in (modern_at, legacy_at):
        assert expires_at <= closed_at < expires_at + 1.0


async def test_a_websocket_from_a_foreign_origin_is_refused(base: str) -> None:
    with pytest.raises(InvalidStatus) as refused_handshake:
        async with websocket(base, "graphql-transport-ws", origin="https://evil.test"):
            pass
    assert refused_handshake.value.response.status_code == 403
    async with websocket(base, "graphql-transport-ws", origin=ALLOWED_ORIGIN) as ws:
        await send(ws, {"type": "connection_init", "payload": {"Authorization": bearer("x1")}})
        assert (await receive(ws))["type"] == "connection_ack"


# --- web hardening --------------------------------------------------------------------------


async def test_a_mutation_over_get_is_refused(http: httpx.AsyncClient) -> None:
    owner = someone()
    query = 'mutation { enqueue(task: "process_data", input: {data: 1}) { id } }'
    headers = {"authorization": bearer(owner)}
    forged = await http.get("/graphql", params={"query": query}, headers=headers)
    assert forged.status_code == 400
    assert forged.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    preflighted = await http.get(
        "/graphql", params={"query": query}, headers={**headers, "apollo-require-preflight": "1"}
    )
    assert preflighted.status_code == 400
    assert "mutations are not allowed when using GET" in preflighted.text
    assert await jobs_of(http, owner) == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_a_csrf_style_simple_post_is_refused(
    http: httpx.AsyncClient, content_type: str
) -> None:
    owner = someone()
    body = json.dumps({"query": ENQUEUE, "variables": {"i": {"data": 1}}})
    response = await http.post(
        "/graphql",
        content=body,
        headers={"content-type": content_type, "authorization": bearer(owner)},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert await jobs_of(http, owner) == []


async def test_a_ten_megabyte_body_is_refused_declared_or_streamed(
    http: httpx.AsyncClient,
) -> None:
    owner = someone()
    payload = json.dumps({"query": ENQUEUE, "variables": {"i": {"data": "x" * 10_000_000}}})
    headers = {"content-type": "application/json", "authorization": bearer(owner)}
    declared = await http.post("/graphql", content=payload, headers=headers)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536].encode()

    streamed = await http.post("/graphql", content=chunks(), headers=headers)
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"
    assert await jobs_of(http, owner) == []


async def test_an_oversized_job_input_is_bad_user_input(http: httpx.AsyncClient) -> None:
    owner = someone()
    error = await refused(http, bearer(owner), ENQUEUE, i={"data": "x" * 20_000})
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["fields"][0]["path"] == "input"
    assert await jobs_of(http, owner) == []


@pytest.mark.parametrize(
    ("bomb", "code", "says"),
    [
        ("{ jobs { edges { node {" + " a {" * 12 + " b" + " }" * 16, "GRAPHQL_VALIDATION_FAILED",
         "exceeds maximum operation depth"),
        ("{" + " ".join(f"t{n}: tasks {{ name }}" for n in range(31)) + " }",
         "GRAPHQL_VALIDATION_FAILED", "aliases found"),
        ("{ tasks { " + "name " * 2500 + "} }", "GRAPHQL_PARSE_FAILED", "more than 2000 tokens"),
    ],
    ids=["depth", "aliases", "tokens"],
)  # fmt: skip
async def test_query_bombs_are_refused(
    http: httpx.AsyncClient, bomb: str, code: str, says: str
) -> None:
    response = await call(http, bearer(someone()), bomb)
    assert response.status_code == 200
    errors = response.json()["errors"]
    assert any(says in e["message"] and e["extensions"]["code"] == code for e in errors), errors


# --- abuse limits ---------------------------------------------------------------------------


WORKFLOW = """mutation { runWorkflow(input: { name: "over", root: {
  task: { name: "process_data", input: { data: 1 } } } }) { id } }"""


async def test_the_mutation_rate_holds_across_replicas_and_recovers(
    replicas: tuple[str, str],
) -> None:
    owner = someone()
    async with (
        httpx.AsyncClient(base_url=replicas[0], timeout=30) as one,
        httpx.AsyncClient(base_url=replicas[1], timeout=30) as two,
    ):
        for n in range(RATE):
            await ok((one, two)[n % 2], bearer(owner), ENQUEUE, i={"data": n})
        error = await refused(two, bearer(owner), ENQUEUE, i={"data": "over"})
        assert error["extensions"]["code"] == "RATE_LIMITED"
        retry_after = error["extensions"]["retryAfter"]
        assert 0 < retry_after <= WINDOW
        assert (await refused(one, bearer(owner), ENQUEUE, i={"data": "over"}))["extensions"][
            "code"
        ] == "RATE_LIMITED"
        assert (await refused(one, bearer(owner), WORKFLOW))["extensions"]["code"] == "RATE_LIMITED"
        assert len(await jobs_of(one, owner)) == RATE
        # Another owner is not slowed by this one.
        await ok(one, bearer(someone()), ENQUEUE, i={"data": "other"})
        await asyncio.sleep(retry_after + 0.05)
        await ok(one, bearer(owner), ENQUEUE, i={"data": "again"})
        assert len(await jobs_of(two, owner)) == RATE + 1


async def _subscribe_all(
    base: str, authorization: str, count: int, then: str | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """Open one socket, start ``count`` firehoses (and ``then``, another subscription); what
    each start answered within 1.5 s."""
    ws = await websocket(base, "graphql-transport-ws").__aenter__()
    await send(ws, {"type": "connection_init", "payload": {"Authorization": authorization}})
    assert (await receive(ws))["type"] == "connection_ack"
    for n, query in enumerate([FIREHOSE] * count + ([then] if then else [])):
        await send(ws, {"id": str(n), "type": "subscribe", "payload": {"query": query}})
    answers: list[dict[str, Any]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.5):
            while True:
                answers.append(await receive(ws))
    return ws, answers


def _codes(answers: list[dict[str, Any]]) -> list[str]:
    return [
        e["extensions"]["code"]
        for a in answers
        for e in (a.get("payload") or {}).get("errors", a.get("payload") or [])
        if isinstance(e, dict) and "extensions" in e
    ]


async def test_subscriptions_are_capped_per_connection_and_per_owner_across_replicas(
    replicas: tuple[str, str],
) -> None:
    """Two on one socket of replica one (a third, a workflow's, is the socket's one too
    many: every subscription counts), then one on replica two: the owner's three places
    are taken on the two replicas together."""
    owner = bearer(someone())
    first, answers = await _subscribe_all(replicas[0], owner, 2, then=WORKFLOW_WATCH)
    assert _codes(answers) == ["RATE_LIMITED"], answers
    assert "per connection" in json.dumps(answers)
    second, answers = await _subscribe_all(replicas[1], owner, 2)
    assert _codes(answers) == ["RATE_LIMITED"], answers
    assert "at most 3 live subscriptions" in json.dumps(answers)
    other, answers = await _subscribe_all(replicas[1], bearer(someone()), 1)
    assert _codes(answers) == []
    for ws in (first, second, other):
        await ws.close()


# --- task payloads --------------------------------------------------------------------------


class _Touch:
    """What a hostile pickle does when a worker unpickles it: here, leave a file behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


async def test_a_pickle_message_on_the_queue_is_rejected_not_executed(
    valkey: EmbeddedValkey, data_dir: Path, worker: Any
) -> None:
    """Someone with broker access queues a pickle: the worker drops it unread."""
    marker = data_dir / f"pickled-{uuid.uuid4().hex}"
    job_id = str(uuid.uuid4())
    message = json.loads(
        task_message(
            task="process_data", job_id=job_id, kwargs={}, queue="jobql", now=datetime.now(UTC)
        )
    )
    body = [[], {"input": _Touch(marker)}, {"callbacks": None, "errbacks": None}]
    message["body"] = base64.b64encode(pickle.dumps(body)).decode()
    message["content-type"] = "application/x-python-serialize"
    message["content-encoding"] = "binary"
    client = redis.Redis.from_url(valkey.url)
    try:
        client.lpush("jobql", json.dumps(message))
        for _ in range(100):
            if not client.llen("jobql"):
                break
            await asyncio.sleep(0.1)
        assert client.llen("jobql") == 0, "the worker never took the message"
        await asyncio.sleep(1)
        assert not marker.exists()
    finally:
        client.close()


def test_the_session_api_without_authentication_still_answers(api: GraphQL) -> None:
    assert api.data("{ tasks { name } }")["tasks"]
