"""Watching a job live, over each transport a frontend uses."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clients import TRANSPORTS
from tests.conftest import JOB_FIELDS, GraphQL

WATCH = f"subscription($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"


def _report(api: GraphQL, steps: int, delay: float, countdown: float | None = None) -> str:
    options = {"countdown": countdown} if countdown else None
    query = (
        "mutation($i: GenerateReportInput!, $o: EnqueueOptions) "
        "{ generateReport(input: $i, options: $o) { id } }"
    )
    data = api.data(query, {"i": {"userId": 1, "steps": steps, "stepDelay": delay}, "o": options})
    return str(data["generateReport"]["id"])


def _assert_well_ordered(jobs: list[dict[str, Any]]) -> None:
    sequences = [job["sequence"] for job in jobs]
    assert sequences == sorted(set(sequences)), f"sequences must grow strictly: {sequences}"
    percents = [job["progress"]["percent"] for job in jobs if job["progress"]]
    assert percents == sorted(percents), f"percent must never go back: {percents}"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_each_transport_streams_a_report_from_snapshot_to_success(
    api: GraphQL, transport: str
) -> None:
    job_id = _report(api, steps=20, delay=0.05, countdown=0.5)

    stream = TRANSPORTS[transport](api.base_url, WATCH, {"id": job_id})

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
def test_subscribing_after_the_end_gets_the_final_snapshot_and_complete(
    api: GraphQL, transport: str
) -> None:
    job_id = _report(api, steps=1, delay=0)
    final = api.wait_done(job_id)

    stream = TRANSPORTS[transport](api.base_url, WATCH, {"id": job_id})

    assert stream.completed
    assert [job["sequence"] for job in stream.jobs] == [final["sequence"]]
    assert stream.jobs[0]["state"] == "SUCCESS"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_an_unknown_job_is_not_found(api: GraphQL, transport: str) -> None:
    stream = TRANSPORTS[transport](api.base_url, WATCH, {"id": "no-such-job"})

    assert not stream.jobs
    assert [e["extensions"]["code"] for e in stream.errors] == ["NOT_FOUND"]


def test_http_subscriptions_never_hold_the_operation_slots(api: GraphQL) -> None:
    """More multipart/SSE streams than execution slots, and queries still answer at once."""
    import threading

    from tests.clients import multipart, sse

    job_id = _report(api, steps=100, delay=0.05)
    streams = [
        threading.Thread(target=fn, args=(api.base_url, WATCH, {"id": job_id}), daemon=True)
        # 10 streams; the API executes 8 operations at once (JOBQL_MAX_CONCURRENT_OPERATIONS)
        for fn in (sse, multipart) * 5
    ]
    for stream in streams:
        stream.start()
    api.wait(job_id, lambda job: job["state"] == "PROGRESS")

    assert api.job(job_id)["done"] is False, "a query waited for the streams to end"
    for stream in streams:
        stream.join(30)
    assert api.job(job_id)["state"] == "SUCCESS"
