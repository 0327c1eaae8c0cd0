"""The operations we show and measure run on the fast paths; ``JOBQL_FAST_PATHS=false``
really runs the libraries' stock behaviour."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from bench import enqueue_flood, run, subscriptions
from devtools.valkey import EmbeddedValkey
from gql.app import create_app
from gql.compat import register as compat
from gql.schema.context import Context
from gql.schema.root import build_schema
from gql.services.store import connect
from tasks.core import compat as register
from tasks.core.app import registry
from tasks.core.settings import Settings
from tests.conftest import ROOT, running_api, service_env

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.contract]

README_OPERATIONS = re.findall(r"```graphql\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.fixture
async def app(valkey: EmbeddedValkey, tmp_path: Path) -> AsyncIterator[FastAPI]:
    """The API's own services in this process, on a database and queue no worker reads."""
    settings = Settings(
        env="test",
        redis_url=valkey.url.rsplit("/", 1)[0] + "/7",
        default_queue="fast-paths",
        data_dir=tmp_path,
        gc_gen0_threshold=0,
        gc_full_interval=0,
        fast_paths=True,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


class Client:
    """Runs operations on JobQL's schema and executor, as the view would."""

    def __init__(self, app: FastAPI) -> None:
        self.schema = build_schema(registry)
        state = app.state
        self.context = Context(
            jobs=state.jobs,
            health=state.health,
            broadcast=state.broadcast,
            limits=state.limits,
            workflows=state.workflows,
            schedules=state.schedules,
        )

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> Any:
        result = await self.schema.execute(query, variables, context_value=self.context)
        assert not result.errors, result.errors
        return result.data

    async def first_event(
        self, query: str, variables: dict[str, Any] | None = None, then: str | None = None
    ) -> Any:
        """The first event of a subscription; ``then`` runs once it listens."""
        events = await self.schema.subscribe(query, variables, context_value=self.context)
        assert isinstance(events, AsyncGenerator), events
        listening = self.context.broadcast.stats()["subscribers"]
        first = asyncio.ensure_future(anext(events))
        async with asyncio.timeout(10):
            if then:
                for _ in range(500):  # the broadcast has no event for "subscribed"
                    if self.context.broadcast.stats()["subscribers"] > listening:
                        break
                    await asyncio.sleep(0.01)
                await self.data(then)
            event = await first
        await events.aclose()
        assert not event.errors, event.errors
        return event.data


def test_the_readme_shows_the_tour() -> None:
    assert len(README_OPERATIONS) == 10, "update this test with the README's tour"


async def test_the_readme_tour_and_the_bench_run_on_the_fast_path(app: FastAPI) -> None:
    client = Client(app)
    assert register.report()["executor"]["active"] is True
    before = compat.EXECUTOR.fallbacks

    report, job, listing, emails, watch, many, workflows, watch_workflow, *periodic = (
        README_OPERATIONS
    )
    job_id = (await client.data(report))["generateReport"]["id"]
    tour = [op.replace('"…"', f'"{job_id}"') for op in (job, listing, emails, watch)]
    assert (await client.data(tour[0]))["job"]["state"] == "PENDING"
    await client.data(tour[1])
    await client.data(tour[2])
    assert (await client.first_event(tour[3]))["job"]["state"] == "PENDING"
    every = 'subscription { jobs(filter: { task: "send_email" }) { id state } }'
    assert f"`{every}`" in (ROOT / "README.md").read_text()
    later = tour[2].replace("failing:", "again:").replace("flaky:", "flakyAgain:")
    assert (await client.first_event(every, then=later))["jobs"]["state"] == "PENDING"
    assert len((await client.data(many))["enqueueMany"]) == 2
    chain_id = (await client.data(workflows))["report"]["id"]
    watched = await client.first_event(watch_workflow.replace('"…"', f'"{chain_id}"'))
    assert watched["workflow"]["state"] == "PENDING"
    create_schedules, read_schedules = periodic
    created_schedules = await client.data(create_schedules)
    listed = (await client.data(read_schedules))["schedules"]
    assert {s["id"] for s in listed} >= {s["id"] for s in created_schedules.values()}
    for schedule in created_schedules.values():
        await client.data(f'mutation {{ deleteSchedule(id: "{schedule["id"]}") {{ id }} }}')

    created = await client.data(run.MUTATION, {"i": {"userId": 7, "stepDelay": 0}})
    bench_id = created["generateReport"]["id"]
    await client.data(run.JOB, {"id": bench_id})
    page = await client.data(run.PAGE)
    assert bench_id in [edge["node"]["id"] for edge in page["jobs"]["edges"]]
    await client.first_event(subscriptions.WATCH, {"id": bench_id})
    await client.data(enqueue_flood.MUTATION, {"i": {"data": 1, "delay": 0}})

    assert compat.EXECUTOR.fallbacks == before, "an example operation left the fast path"


async def test_the_api_reports_its_fast_paths(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        stats = (await http.get("/health/stats")).json()["fast_paths"]
    kinds = {
        "graphql_core.executor_leaks": "fix",
        "executor": "speed-up",
        "bounded_sockets": "design",
        "coalescing_websockets": "speed-up",
        "hiredis_packing": "speed-up",
    }
    assert {name: stats[name]["kind"] for name in kinds} == kinds
    # The API's own (the register is per process: in a test process, other tests' decisions
    # about a worker's internals are in it too).
    assert all(stats[name]["active"] and stats[name]["why"] for name in kinds), stats
    assert stats["executor"]["verified"].startswith("graphql-core 3.3")
    assert stats["executor"]["why"].startswith("P6"), "a speed-up names the figure it earns on"


async def test_commands_packed_by_hiredis_reach_redis_as_sent(
    app: FastAPI, valkey: EmbeddedValkey
) -> None:
    """The API's clients pack through hiredis (``gql.compat.packing``): text in any script, bytes,
    numbers and a float (which takes redis-py's own packing) arrive intact."""
    assert compat.HIREDIS_PACKING.active
    client = connect(valkey.url, Settings(redis_url=valkey.url))
    try:
        assert client.connection_pool.connection_class.__name__.startswith("Hiredis")
        values = {"text": "é ü 🙂 中文", "empty": "", "number": 7, "float": 0.1}
        await client.hset("test:packing", mapping=values)  # type: ignore[misc]
        await client.zadd("test:packing:z", {"m": 1.5})
        stored = await client.hgetall("test:packing")  # type: ignore[misc]
        assert stored == {"text": "é ü 🙂 中文", "empty": "", "number": "7", "float": "0.1"}
        assert await client.zscore("test:packing:z", "m") == 1.5
        big = ["x" * 10] * 5000  # a large command: several buffers in redis-py's packing
        assert await client.rpush("test:packing:l", *big) == 5000
    finally:
        await client.delete("test:packing", "test:packing:z", "test:packing:l")
        await client.aclose()


@pytest.mark.slow
def test_with_fast_paths_off_the_api_runs_stock(valkey: EmbeddedValkey, data_dir: Path) -> None:
    env = service_env(valkey.url, data_dir, JOBQL_FAST_PATHS="false")
    with running_api(env, data_dir) as api:
        stats = api.http.get("/health/stats").json()["fast_paths"]
        assert stats, "no fast path is registered"
        for name, path in stats.items():
            if path["kind"] == "speed-up":
                assert (path["active"], path["reason"]) == (False, "JOBQL_FAST_PATHS=false"), name
            else:  # a fix of a library bug stays on: the stock behaviour is the bug
                assert path["active"] is True, name
        assert api.data("{ tasks { name } }")["tasks"], "and it serves on stock behaviour"


_QUERY = b'{"query":"{ __typename }"}'
_ANSWER = b'{"data":{"__typename":"Query"}}'


def _post(*extra: bytes, body: bytes | None = _QUERY) -> bytes:
    head = [b"POST /graphql HTTP/1.1", b"Host: api", b"Content-Type: application/json"]
    head += [b"Content-Length: %d" % len(_QUERY), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")


def _read_until(sock: socket.socket, seen: bytes, wanted: bytes, count: int) -> bytes:
    while seen.count(wanted) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


@pytest.mark.slow
def test_bounded_sockets_keep_http_1_1_working(valkey: EmbeddedValkey, data_dir: Path) -> None:
    """On JobQL's HTTP protocol, pipelined requests, ``Expect: 100-continue`` and
    ``Connection: close`` are answered as uvicorn answers them (fast paths asked for: this
    file also runs in the stock pass)."""
    with running_api(service_env(valkey.url, data_dir, JOBQL_FAST_PATHS="true"), data_dir) as api:
        assert api.http.get("/health/stats").json()["fast_paths"]["bounded_sockets"]["active"]
        address = (api.http.base_url.host, api.http.base_url.port or 80)
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(_post() + _post())
            answers = _read_until(sock, b"", _ANSWER, 2)
            assert answers.count(b"HTTP/1.1 200 OK") == 2 and answers.count(_ANSWER) == 2

            sock.sendall(_post(b"Expect: 100-continue", body=None))
            assert _read_until(sock, b"", b"\r\n\r\n", 1) == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(_QUERY)
            assert _ANSWER in _read_until(sock, b"", _ANSWER, 1)

            sock.sendall(_post(b"Connection: close"))
            last = _read_until(sock, b"", b"\0", 1)  # to the end: the server closes
            assert last.startswith(b"HTTP/1.1 200 OK") and last.endswith(_ANSWER)
