"""An operator after an incident: the failed jobs of a filter retried in bulk, each once however
often or however concurrently it is asked; the waiting ones cancelled in bulk; both bounded per
call and continued by cursor. On the session's API (authentication off: every job is
``anonymous``'s); owners and admins are in ``test_operator_controls``.

The bulk retry runs at 200 jobs in ``make test`` and at 1,000 with ``JOBQL_RELIABILITY=full``
(or any size in ``JOBQL_BULK_RETRY_JOBS``); its time is in the run's reliability ledger.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core.records import job_key
from tests.conftest import AsyncGraphQL, GraphQL
from tests.support.ledger import Ledger, scale

pytestmark = pytest.mark.slow

BULK_JOBS = int(os.environ.get("JOBQL_BULK_RETRY_JOBS") or scale(200, 1000))
FAIL_MANY = "mutation($i: [SummarizeInput!]!) { summarizeMany(inputs: $i) { id } }"
RETRY_JOBS = """
mutation($f: JobFilter!, $first: Int, $after: String) {
  retryJobs(filter: $f, first: $first, after: $after) {
    examined retriedCount retried { id retryId }
    skippedCount skipped { id reason message retryId } cursor
  }
}
"""
CANCEL_JOBS = """
mutation($f: JobFilter!, $first: Int, $after: String) {
  cancelJobs(filter: $f, first: $first, after: $after) {
    examined cancelledCount cancelled skippedCount skipped { id reason message } cursor
  }
}
"""


@pytest.fixture(scope="module")
def store(valkey: EmbeddedValkey) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    yield client
    client.close()


def _stamp() -> str:
    return datetime.now(UTC).isoformat()


def _failed_jobs(api: GraphQL, store: redis.Redis, count: int) -> tuple[list[str], dict[str, Any]]:
    """``count`` failed jobs of their own time window, and the filter that selects them alone."""
    after = _stamp()
    time.sleep(0.002)
    ids: list[str] = []
    while len(ids) < count:
        batch = [{"fail": True}] * min(500, count - len(ids))
        ids += [job["id"] for job in api.data(FAIL_MANY, {"i": batch})["summarizeMany"]]
    time.sleep(0.002)
    before = _stamp()
    deadline = time.monotonic() + 120
    while True:
        with store.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(job_key(job_id), "state")
            states = pipe.execute()
        if all(state == "FAILURE" for state in states):
            break
        assert time.monotonic() < deadline, f"{states.count('FAILURE')} of {count} failed"
        time.sleep(0.2)
    window = {"task": "summarize", "states": ["FAILURE"], "createdAfter": after,
              "createdBefore": before}  # fmt: skip
    return ids, window


def _follow(api: GraphQL, window: dict[str, Any], first: int | None = None) -> list[dict]:
    """Every call of a bulk retry, following its cursor to the end."""
    calls, after = [], None
    while True:
        call = api.data(RETRY_JOBS, {"f": window, "first": first, "after": after})["retryJobs"]
        calls.append(call)
        after = call["cursor"]
        if after is None:
            return calls


def test_a_bulk_retry_retries_each_failed_job_once_however_often_it_is_asked(
    api: GraphQL, store: redis.Redis, ledger: Ledger
) -> None:
    ids, window = _failed_jobs(api, store, BULK_JOBS)

    started = time.perf_counter()
    calls = _follow(api, window)
    took = time.perf_counter() - started

    retried = {item["id"]: item["retryId"] for call in calls for item in call["retried"]}
    assert set(retried) == set(ids), "every failed job of the filter is retried"
    assert sum(call["retriedCount"] for call in calls) == BULK_JOBS, "and each once"
    assert len(set(retried.values())) == BULK_JOBS and not set(retried.values()) & set(ids)
    assert all(call["examined"] <= 500 for call in calls), "bounded by JOBQL_MAX_BULK_SIZE"
    assert len(calls) == -(-BULK_JOBS // 500)
    ledger.submitted = BULK_JOBS
    ledger.terminal["FAILURE"] = BULK_JOBS
    ledger.notes.append(f"retryJobs: {BULK_JOBS} retried once in {took:.3f} s, {len(calls)} calls")

    again = _follow(api, window, first=BULK_JOBS // 3 + 1)
    assert sum(call["retriedCount"] for call in again) == 0, "no job is retried twice"
    skipped = {s["id"]: s for call in again for s in call["skipped"]}
    assert set(skipped) == set(ids)
    assert {s["reason"] for s in skipped.values()} == {"ALREADY_RETRIED"}
    assert {k: s["retryId"] for k, s in skipped.items()} == retried, "naming the first retry"

    # retryJob shares the mark: asked for a job retried in bulk, it answers that retry.
    one = ids[0]
    single = api.data("mutation($id: ID!) { retryJob(id: $id) { id task input } }", {"id": one})
    assert single["retryJob"]["id"] == retried[one]
    assert single["retryJob"]["task"] == "summarize" and single["retryJob"]["input"]["fail"]
    ledger.notes.append("asked again: 0 retried, all ALREADY_RETRIED")
    ledger.settle()


async def test_two_concurrent_bulk_retries_share_the_jobs_without_overlap(
    api: GraphQL, async_api: AsyncGraphQL, store: redis.Redis
) -> None:
    ids, window = await asyncio.to_thread(_failed_jobs, api, store, 120)

    one, two = await asyncio.gather(
        *(async_api.data(RETRY_JOBS, {"f": window, "first": 120}) for _ in range(2))
    )
    first = {item["id"] for item in one["retryJobs"]["retried"]}
    second = {item["id"] for item in two["retryJobs"]["retried"]}
    assert not first & second, "no job retried by both calls"
    assert first | second == set(ids), "every job retried by one of them"
    for call, mine in ((one, first), (two, second)):
        skipped = call["retryJobs"]["skipped"]
        assert {s["id"] for s in skipped} == set(ids) - mine
        assert {s["reason"] for s in skipped} <= {"ALREADY_RETRIED"}


def test_a_bulk_cancel_revokes_the_waiting_jobs_page_by_page(api: GraphQL) -> None:
    after = _stamp()
    time.sleep(0.002)
    finished = api.data("mutation { summarize(input: {results: [1]}) { id } }")["summarize"]["id"]
    api.wait_done(finished)
    waiting = [
        api.data("mutation { summarize(input: {results: [2]}, options: {countdown: 60}) { id } }")[
            "summarize"
        ]["id"]
        for _ in range(7)
    ]
    window = {"task": "summarize", "createdAfter": after}

    first = api.data(CANCEL_JOBS, {"f": window, "first": 5})["cancelJobs"]
    assert first["examined"] == 5 and first["cursor"]
    rest = api.data(CANCEL_JOBS, {"f": window, "first": 5, "after": first["cursor"]})["cancelJobs"]
    assert rest["examined"] == 3 and rest["cursor"] is None

    cancelled = first["cancelled"] + rest["cancelled"]
    assert (
        sorted(cancelled) == sorted(waiting)
        and first["cancelledCount"] + rest["cancelledCount"] == 7
    )
    skipped = first["skipped"] + rest["skipped"]
    assert [(s["id"], s["reason"]) for s in skipped] == [(finished, "ALREADY_DONE")]
    assert {api.job(job_id)["state"] for job_id in waiting} == {"REVOKED"}  # type: ignore[index]

    again = api.data(CANCEL_JOBS, {"f": window})["cancelJobs"]
    assert again["cancelledCount"] == 0 and again["skippedCount"] == 8, "cancelling is idempotent"

    for first_value in (0, 501):
        error = api.error(CANCEL_JOBS, {"f": window, "first": first_value})
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert error["extensions"]["fields"][0]["path"] == "first"
