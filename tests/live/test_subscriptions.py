"""Watching a job live, over each transport a frontend uses."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import JOB_FIELDS, AsyncGraphQL
from tests.support.clients import TRANSPORTS, multipart, sse

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.contract, pytest.mark.django_results, pytest.mark.rabbitmq]

WATCH = f"subscription($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"


async def _report(
    api: AsyncGraphQL, steps: int, delay: float, countdown: float | None = None
) -> str:
    options = {"countdown": countdown} if countdown else None
    query = (
        "mutation($i: GenerateReportInput!, $o: EnqueueOptions) "
        "{ generateReport(input: $i, options: $o) { id } }"
    )
    report = {"userId": 1, "steps": steps, "stepDelay": delay}
    data = await api.data(query, {"i": report, "o": options})
    return str(data["generateReport"]["id"])


def _assert_well_ordered(jobs: list[dict[str, Any]]) -> None:
    sequences = [job["sequence"] for job in jobs]
    assert sequences == sorted(set(sequences)), f"sequences must grow strictly: {sequences}"
    percents = [job["progress"]["percent"] for job in jobs if job["progress"]]
    assert percents == sorted(percents), f"percent must never go back: {percents}"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_each_transport_streams_a_report_from_snapshot_to_success(
    async_api: AsyncGraphQL, transport: str
) -> None:
    # Started later than the subscription surely is, even on a busy machine (a CI run's
    # backend passes side by side once took longer than 0.5 s from enqueue to subscribe).
    job_id = await _report(async_api, steps=20, delay=0.05, countdown=1.5)

    stream = await TRANSPORTS[transport](async_api.base_url, WATCH, {"id": job_id})

    assert stream.completed, "the server completes the stream after the final state"
    assert not stream.errors, stream.errors
    jobs = stream.jobs
    assert jobs[0]["state"] == "PENDING", "the first message is the snapshot"
    assert jobs[-1]["state"] == "SUCCESS" and jobs[-1]["done"]
    assert jobs[-1]["result"] == {"userId": 1, "reportUrl": "/reports/1.pdf"}
    assert "STARTED" in [job["state"] for job in jobs], "no state change is skipped"
    assert any(job["state"] == "PROGRESS" for job in jobs)
    _assert_well_ordered(jobs)


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_subscribing_after_the_end_gets_the_final_snapshot_and_complete(
    async_api: AsyncGraphQL, transport: str
) -> None:
    job_id = await _report(async_api, steps=1, delay=0)
    final = await async_api.wait_done(job_id)

    stream = await TRANSPORTS[transport](async_api.base_url, WATCH, {"id": job_id})

    assert stream.completed
    assert [job["sequence"] for job in stream.jobs] == [final["sequence"]]
    assert stream.jobs[0]["state"] == "SUCCESS"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_an_unknown_job_is_not_found(async_api: AsyncGraphQL, transport: str) -> None:
    stream = await TRANSPORTS[transport](async_api.base_url, WATCH, {"id": "no-such-job"})

    assert not stream.jobs
    assert [e["extensions"]["code"] for e in stream.errors] == ["NOT_FOUND"]


async def test_http_subscriptions_never_hold_the_operation_slots(async_api: AsyncGraphQL) -> None:
    """More multipart/SSE streams than execution slots, and queries still answer at once."""
    job_id = await _report(async_api, steps=100, delay=0.05)
    # 10 streams; the API executes 8 operations at once (JOBQL_MAX_CONCURRENT_OPERATIONS)
    opened = [asyncio.Event() for _ in range(10)]
    streams = [
        asyncio.create_task(
            watch(async_api.base_url, WATCH, {"id": job_id}, on_result=lambda _, e=event: e.set())
        )
        for watch, event in zip((sse, multipart) * 5, opened, strict=True)
    ]
    async with asyncio.timeout(30):
        for event in opened:
            await event.wait()  # every stream is open and has its snapshot

    assert (await async_api.job(job_id))["done"] is False, "a query waited for the streams to end"
    finished = await asyncio.wait_for(asyncio.gather(*streams), 30)
    assert all(stream.completed for stream in finished)
    assert (await async_api.job(job_id))["state"] == "SUCCESS"
