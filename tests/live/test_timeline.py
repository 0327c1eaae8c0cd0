"""A job's timeline and log lines as a client receives them: over a subscription while the job
runs, and read back after a retry."""

from __future__ import annotations

from typing import Any

import redis

from devtools.valkey import EmbeddedValkey
from tests.conftest import AsyncGraphQL
from tests.support.clients import graphql_transport_ws
from tests.support.native_tasks import GATE_KEY

TIMELINE = """
id state done sequence worker logsDropped
events { at state attempt worker message count }
logs { at level message }
"""
WATCH = f"subscription($id: ID!) {{ job(id: $id) {{ {TIMELINE} }} }}"
READ = f"query($id: ID!) {{ job(id: $id) {{ {TIMELINE} }} }}"
ENQUEUE = "mutation($task: String!, $i: JSON!) { enqueue(task: $task, input: $i) { id } }"


async def _enqueue(api: AsyncGraphQL, task: str, **data: Any) -> str:
    return str((await api.data(ENQUEUE, {"task": task, "i": data}))["enqueue"]["id"])


async def test_a_watcher_receives_the_events_and_log_lines_as_they_happen(
    async_api: AsyncGraphQL, valkey: EmbeddedValkey
) -> None:
    job_id = await _enqueue(async_api, "timeline.chatty", lines=4, pause=0.05)
    gate = redis.Redis.from_url(valkey.url)

    def go(result: dict[str, Any]) -> None:  # the job waits until the snapshot is here
        gate.set(GATE_KEY + job_id, 1, ex=60)

    try:
        stream = await graphql_transport_ws(
            async_api.base_url, WATCH, {"id": job_id}, within=30, on_result=go
        )
    finally:
        gate.close()

    assert stream.completed and not stream.errors, stream.errors
    jobs = stream.jobs
    final = jobs[-1]
    assert final["state"] == "SUCCESS"
    assert [(line["level"], line["message"]) for line in final["logs"]] == [
        ("INFO", "line 1 of 4"),
        ("INFO", "line 2 of 4"),
        ("INFO", "line 3 of 4"),
        ("WARNING", "line 4 of 4"),
        ("INFO", "done after 4 lines"),  # through Python's logging, in the task's body
    ]
    assert final["logsDropped"] == 0
    assert [(e["state"], e["attempt"]) for e in final["events"]] == [
        ("PENDING", 0),
        ("STARTED", 1),
        ("PROGRESS", 1),
        ("SUCCESS", 1),
    ]
    progress = final["events"][2]
    assert (progress["count"], progress["message"]) == (4, "step 4")
    assert final["events"][1]["worker"] == final["worker"] is not None
    moments = [e["at"] for e in final["events"]]
    assert moments == sorted(moments)

    # Live: lines and events arrived while the job ran, each message holding what the one
    # before held and more, in order.
    assert jobs[0]["logs"] == []
    sequences = [job["sequence"] for job in jobs]
    assert sequences == sorted(set(sequences))
    running = [job for job in jobs if not job["done"]]
    seen = [len(job["logs"]) for job in running]
    assert seen == sorted(seen)
    assert len({n for n in seen if 0 < n < len(final["logs"])}) >= 2, seen
    for job in running:
        assert job["logs"] == final["logs"][: len(job["logs"])]
    counts = [e["count"] for job in running for e in job["events"] if e["state"] == "PROGRESS"]
    assert counts and min(counts) < 4, "the timeline streams with the job"

    newest = "query($id: ID!, $n: Int) { job(id: $id) { logs(last: $n) { message } } }"
    for last, expected in ((2, final["logs"][-2:]), (0, [])):
        read = await async_api.data(newest, {"id": job_id, "n": last})
        assert read["job"]["logs"] == [{"message": line["message"]} for line in expected]
    refused = await async_api.error(newest, {"id": job_id, "n": -1})
    assert refused["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_retried_job_shows_the_retry_with_its_error(async_api: AsyncGraphQL) -> None:
    job_id = await _enqueue(async_api, "timeline.flaky")
    await async_api.wait_done(job_id)

    job = (await async_api.data(READ, {"id": job_id}))["job"]
    assert job["state"] == "FAILURE"
    assert [(e["state"], e["attempt"], e["message"]) for e in job["events"]] == [
        ("PENDING", 0, None),
        ("STARTED", 1, None),
        ("RETRY", 1, "ValueError: first try fails"),
        ("STARTED", 2, None),
        ("FAILURE", 2, "RuntimeError: second try fails too"),
    ]
    assert all(e["worker"] for e in job["events"][1:])
    assert job["logs"] == []
