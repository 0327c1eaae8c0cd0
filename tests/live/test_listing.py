"""Listing jobs: a Relay connection, newest first, filtered inside Redis, exact at any depth."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devtools.valkey import EmbeddedValkey
from gql.services.store import JobStore, connect
from tasks.core import records
from tasks.core.settings import Settings
from tests.conftest import GraphQL
from tests.tasks.core.test_records import OLD_SCAN_LIMIT, write_jobs

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.contract, pytest.mark.django_results]

PAGE = """
query($first: Int, $after: String, $filter: JobFilter) {
  jobs(first: $first, after: $after, filter: $filter) {
    edges { cursor node { id task state createdAt } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


class Client:
    """The API over real HTTP, asked the way an async frontend would."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def data(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.http.post(
            "/graphql", json={"query": query, "variables": variables or {}}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    async def page(self, **variables: Any) -> dict[str, Any]:
        return (await self.data(PAGE, variables))["jobs"]

    async def ids(self, job_filter: dict[str, object], first: int = 50) -> list[str]:
        page = await self.page(first=first, filter=job_filter)
        return [edge["node"]["id"] for edge in page["edges"]]

    async def enqueue_many(self, count: int) -> list[str]:
        aliases = " ".join(
            f'j{i}: enqueue(task: "process_data", input: {{data: {i}, delay: 0}}) {{ id }}'
            for i in range(count)
        )
        data = await self.data(f"mutation {{ {aliases} }}")
        return [data[f"j{i}"]["id"] for i in range(count)]

    async def wait_done(self, job_id: str) -> None:
        query = "query($id: ID!) { job(id: $id) { done } }"
        for _ in range(600):
            if (await self.data(query, {"id": job_id}))["job"]["done"]:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"job {job_id} is not done after 30 s")


@pytest.fixture
async def client(api: GraphQL) -> AsyncIterator[Client]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
        yield Client(http)


def _now() -> str:
    return datetime.now(UTC).isoformat()


async def test_pagination_walks_every_job_once_newest_first(client: Client) -> None:
    since = _now()
    created = await client.enqueue_many(23)
    job_filter = {"task": "process_data", "createdAfter": since}

    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = await client.page(first=5, after=after, filter=job_filter)
        seen += [edge["node"]["id"] for edge in page["edges"]]
        pages += 1
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
        assert after == page["edges"][-1]["cursor"]

    assert pages == 5, "hasNextPage is false on the last page, not one page later"
    assert seen == list(reversed(created)), "every job once, newest first"


async def test_new_jobs_do_not_shift_a_page_being_walked(client: Client) -> None:
    since = _now()
    created = await client.enqueue_many(6)
    job_filter = {"task": "process_data", "createdAfter": since}
    first = await client.page(first=3, filter=job_filter)
    await client.enqueue_many(4)  # newer jobs arrive at the front while the client pages on

    rest = await client.page(first=10, after=first["pageInfo"]["endCursor"], filter=job_filter)

    assert [e["node"]["id"] for e in rest["edges"]] == list(reversed(created))[3:]
    assert rest["pageInfo"]["hasNextPage"] is False


async def test_filters_by_state_task_and_creation_time(client: Client) -> None:
    since = _now()
    failed = (
        await client.data(
            'mutation { sendEmail(input: {to: "a@b.invalid", subject: "s", body: "b"}) { id } }'
        )
    )["sendEmail"]["id"]
    ok = await client.enqueue_many(2)
    for job_id in [failed, *ok]:
        await client.wait_done(job_id)
    until = _now()

    assert await client.ids({"states": ["FAILURE"], "createdAfter": since}) == [failed]
    assert await client.ids({"task": "process_data", "createdAfter": since}) == list(reversed(ok))
    both = {"states": ["SUCCESS", "FAILURE"], "createdAfter": since}
    assert await client.ids(both) == [*reversed(ok), failed]
    assert await client.ids({"createdAfter": until}) == []
    assert failed not in await client.ids({"createdBefore": since})


@pytest.mark.slow
async def test_a_failure_buried_behind_many_newer_jobs_is_still_listed(
    client: Client, valkey: EmbeddedValkey, settings: Settings
) -> None:
    """The user's story of issue 9: one job failed, then more than 10,000 were enqueued."""
    since = _now()
    failed = (
        await client.data(
            'mutation { sendEmail(input: {to: "a@b.invalid", subject: "s", body: "b"}) { id } }'
        )
    )["sendEmail"]["id"]
    await client.wait_done(failed)
    redis = connect(valkey.url, settings)
    try:
        store = JobStore(redis, settings)
        await write_jobs(store, "anonymous", "listing.filler", OLD_SCAN_LIMIT + 500, records.now())
    finally:
        await redis.aclose()

    for job_filter in (
        {"states": ["FAILURE"], "createdAfter": since},
        {"task": "send_email", "createdAfter": since},
        {"states": ["FAILURE"], "task": "send_email"},
    ):
        page = await client.page(first=5, filter=job_filter)
        assert [e["node"]["id"] for e in page["edges"]][:1] == [failed], job_filter
    page = await client.page(first=5, filter={"states": ["FAILURE"], "createdAfter": since})
    assert page["pageInfo"]["hasNextPage"] is False


async def test_first_zero_is_an_empty_page(client: Client) -> None:
    page = await client.page(first=0)
    assert page["edges"] == [] and page["pageInfo"]["endCursor"] is None
