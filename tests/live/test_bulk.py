"""A frontend enqueues many jobs at once: all validated first, all recorded or none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from tests.conftest import GraphQL

pytestmark = pytest.mark.slow

MANY = """
mutation($items: [EnqueueItem!]!, $options: EnqueueOptions) {
  enqueueMany(items: $items, options: $options) { id task state queue input }
}
"""
TYPED_MANY = """
mutation($inputs: [GenerateReportInput!]!, $options: EnqueueOptions) {
  generateReportMany(inputs: $inputs, options: $options) { id task state input }
}
"""
NEWEST = "{ jobs(first: 1) { nodes { id } } }"


@pytest.fixture
async def client(api: GraphQL) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
        yield http


async def _post(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await client.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _data(client: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await _post(client, query, **variables)
    assert "errors" not in body, body["errors"]
    return dict(body["data"])


async def _newest(client: httpx.AsyncClient) -> str | None:
    nodes = (await _data(client, NEWEST))["jobs"]["nodes"]
    return str(nodes[0]["id"]) if nodes else None


async def _wait_done(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    query = "query($id: ID!) { job(id: $id) { state done result } }"
    for _ in range(600):
        job = (await _data(client, query, id=job_id))["job"]
        if job["done"]:
            return dict(job)
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_a_batch_of_different_tasks_runs_every_job(client: httpx.AsyncClient) -> None:
    items = [
        {"task": "process_data", "input": {"data": {"n": 1}, "delay": 0}},
        {"task": "generate_report", "input": {"userId": 5, "steps": 2, "stepDelay": 0}},
        {"task": "process_data", "input": {"data": "x"}, "options": {"queue": "reports"}},
    ]
    jobs = (await _data(client, MANY, items=items))["enqueueMany"]

    assert [job["task"] for job in jobs] == ["process_data", "generate_report", "process_data"]
    assert [job["queue"] for job in jobs] == ["jobql", "jobql", "reports"]
    assert all(job["state"] == "PENDING" for job in jobs)
    assert len({job["id"] for job in jobs}) == 3
    done = await asyncio.gather(*(_wait_done(client, job["id"]) for job in jobs))
    assert [job["state"] for job in done] == ["SUCCESS"] * 3
    assert done[1]["result"] == {"userId": 5, "reportUrl": "/reports/5.pdf"}


async def test_one_invalid_item_enqueues_nothing_and_every_error_names_its_index(
    client: httpx.AsyncClient,
) -> None:
    before = await _newest(client)
    items = [
        {"task": "process_data", "input": {"data": 1}},
        {"task": "generate_report", "input": {"userId": "not a number", "steps": 2}},
        {"task": "no_such_task", "input": {}},
        {"task": "process_data", "input": {"data": 2}, "options": {"priority": 42}},
    ]
    body = await _post(client, MANY, items=items)

    (error,) = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    paths = [field["path"] for field in error["extensions"]["fields"]]
    assert paths == ["items.1.input.userId", "items.2.task", "items.3.options.priority"]
    assert body["data"] is None
    assert await _newest(client) == before, "no job of the batch was recorded"


async def test_typed_batch_names_the_index_of_each_bad_input(client: httpx.AsyncClient) -> None:
    before = await _newest(client)
    inputs = [{"userId": 1, "steps": 1}, {"userId": 2, "steps": 0}, {"userId": 3, "steps": -4}]
    body = await _post(client, TYPED_MANY, inputs=inputs)

    (error,) = body["errors"]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [f["path"] for f in error["extensions"]["fields"]] == [
        "inputs.1.steps",
        "inputs.2.steps",
    ]
    assert await _newest(client) == before

    jobs = (await _data(client, TYPED_MANY, inputs=inputs[:1] * 3))["generateReportMany"]
    assert [job["task"] for job in jobs] == ["generate_report"] * 3
    assert jobs[0]["input"]["userId"] == 1


async def test_idempotency_keys_work_per_item(client: httpx.AsyncClient) -> None:
    items = [
        {"task": "process_data", "input": {"data": 1}, "options": {"idempotencyKey": "bulk-a"}},
        {"task": "process_data", "input": {"data": 2}},
    ]
    first = (await _data(client, MANY, items=items))["enqueueMany"]
    again = (await _data(client, MANY, items=items))["enqueueMany"]
    assert again[0]["id"] == first[0]["id"], "the keyed item returns its job"
    assert again[1]["id"] != first[1]["id"], "the unkeyed item is a new job"

    # A batch key stands for one key per item: the same batch again returns the same jobs.
    inputs = [{"userId": 8, "steps": 1}, {"userId": 9, "steps": 1}]
    options = {"idempotencyKey": "bulk-batch"}
    one = (await _data(client, TYPED_MANY, inputs=inputs, options=options))["generateReportMany"]
    two = (await _data(client, TYPED_MANY, inputs=inputs, options=options))["generateReportMany"]
    assert [job["id"] for job in two] == [job["id"] for job in one]
    assert one[0]["id"] != one[1]["id"]

    repeated = [items[0], {**items[0], "input": {"data": 3}}]
    body = await _post(client, MANY, items=repeated)
    fields = body["errors"][0]["extensions"]["fields"]
    assert fields[0]["path"] == "items.1.options.idempotencyKey"


async def test_too_many_or_no_items_is_bad_user_input(client: httpx.AsyncClient) -> None:
    none = await _post(client, MANY, items=[])
    assert none["errors"][0]["extensions"]["fields"][0]["path"] == "items"
    too_many = [{"task": "process_data", "input": {"data": i}} for i in range(501)]
    body = await _post(client, MANY, items=too_many)
    assert body["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "1 to 500" in body["errors"][0]["message"]


@contextlib.asynccontextmanager
async def _commands(url: str) -> AsyncIterator[list[str]]:
    """Every command clients send to Redis meanwhile (not those scripts run), from MONITOR."""
    seen: list[str] = []
    client = aioredis.Redis.from_url(url, decode_responses=True)
    async with client.monitor() as monitor:

        async def read() -> None:
            while True:
                command = await monitor.next_command()
                if command.get("client_type") != "lua":
                    seen.append(str(command["command"]))

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.1)
        try:
            yield seen
        finally:
            await asyncio.sleep(0.3)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    await client.aclose()


async def test_a_batch_of_100_is_one_round_trip(client: httpx.AsyncClient, valkey: Any) -> None:
    # Scheduled an hour ahead: a worker only reserves these jobs while Redis is watched
    # (kombu's `unacked` bookkeeping, not counted). One batch first, so that the script is
    # loaded: a first call on a fresh server is EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA.
    items = [{"task": "process_data", "input": {"data": i}} for i in range(100)]
    warm = (await _data(client, MANY, items=items[:1], options={"countdown": 3600}))["enqueueMany"]
    async with _commands(valkey.url) as seen:
        jobs = (await _data(client, MANY, items=items, options={"countdown": 3600}))["enqueueMany"]
        await asyncio.sleep(0.2)
    ids = {job["id"] for job in jobs}
    assert len(ids) == 100

    touching = [
        command
        for command in seen
        if any(job_id in command for job_id in ids) and "unacked" not in command
    ]
    assert len(touching) == 1, touching
    assert touching[0].startswith(("EVALSHA", "EVAL"))
    for job in [*warm, *jobs]:
        await _data(client, "mutation($id: ID!) { cancelJob(id: $id) { id } }", id=job["id"])
