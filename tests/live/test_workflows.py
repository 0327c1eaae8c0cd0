"""A frontend runs workflows (chains, groups, chords) and watches each under one id."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from celery import Celery

from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tasks.core.workflow_records import workflow_key
from tests.conftest import JOB_FIELDS, AsyncGraphQL
from tests.support.clients import graphql_transport_ws

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.django_results, pytest.mark.postgres]

WORKFLOW_FIELDS = f"""
id name state done sequence progress createdAt finishedAt onFailure shape
failedStep {{ id task }}
steps {{ workflowId {JOB_FIELDS} }}
"""
RUN = f"""
mutation($input: WorkflowInput!, $options: EnqueueOptions) {{
  runWorkflow(input: $input, options: $options) {{ {WORKFLOW_FIELDS} }}
}}"""
READ = f"query($id: ID!) {{ workflow(id: $id) {{ {WORKFLOW_FIELDS} }} }}"
CANCEL = f"mutation($id: ID!) {{ cancelWorkflow(id: $id) {{ {WORKFLOW_FIELDS} }} }}"
WATCH = f"subscription($id: ID!) {{ workflow(id: $id) {{ {WORKFLOW_FIELDS} }} }}"


def task(name: str, input: dict[str, Any] | None = None, **receive: Any) -> dict[str, Any]:
    return {"task": {"name": name, "input": input or {}, **receive}}


def process(data: Any, delay: float = 0.1, **receive: Any) -> dict[str, Any]:
    return task("process_data", {"data": data, "delay": delay}, **receive)


async def run(
    api: AsyncGraphQL, root: dict[str, Any], name: str = "", **more: Any
) -> dict[str, Any]:
    data = await api.data(RUN, {"input": {"name": name, "root": root, **more}})
    return dict(data["runWorkflow"])


async def wait_done(api: AsyncGraphQL, workflow_id: str, within: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        workflow = (await api.data(READ, {"id": workflow_id}))["workflow"]
        if workflow["done"]:
            return dict(workflow)
        assert asyncio.get_running_loop().time() < deadline, f"never done: {workflow}"
        await asyncio.sleep(0.1)


async def test_a_chain_of_three_passes_each_result_on(async_api: AsyncGraphQL) -> None:
    started = await run(
        async_api,
        {
            "chain": [
                process({"userId": 7}),
                process(None, resultTo="data", resultPath="processed"),
                task(
                    "generate_report",
                    {"steps": 2, "stepDelay": 0.05},
                    resultTo="userId",
                    resultPath="processed.userId",
                ),
            ]
        },
        name="ingest_and_report",
    )
    assert started["state"] == "PENDING" and len(started["steps"]) == 3
    assert {step["workflowId"] for step in started["steps"]} == {started["id"]}

    workflow = await wait_done(async_api, started["id"])

    assert workflow["state"] == "SUCCESS" and workflow["progress"] == 100
    first, second, report = workflow["steps"]
    assert first["result"] == {"processed": {"userId": 7}, "status": "complete"}
    assert second["result"] == {"processed": {"userId": 7}, "status": "complete"}
    assert report["result"] == {"userId": 7, "reportUrl": "/reports/7.pdf"}
    # Every step is an ordinary job too.
    assert (await async_api.job(report["id"]))["state"] == "SUCCESS"  # type: ignore[index]


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool(a["startedAt"] < b["finishedAt"] and b["startedAt"] < a["finishedAt"])


async def test_a_group_of_five_runs_in_parallel(async_api: AsyncGraphQL) -> None:
    started = await run(async_api, {"group": [process(i, delay=0.5) for i in range(5)]})

    workflow = await wait_done(async_api, started["id"])

    assert workflow["state"] == "SUCCESS"
    steps = workflow["steps"]
    assert [s["result"]["processed"] for s in steps] == [0, 1, 2, 3, 4]
    assert any(_overlap(a, b) for a in steps for b in steps if a is not b), "nothing overlapped"


async def test_a_chord_gives_its_last_step_every_result(async_api: AsyncGraphQL) -> None:
    started = await run(
        async_api,
        {
            "chord": {
                "group": [process(f"part-{i}", delay=0.2) for i in range(3)],
                "then": {"name": "summarize", "resultTo": "results"},
            }
        },
    )

    workflow = await wait_done(async_api, started["id"])

    assert workflow["state"] == "SUCCESS"
    summary = workflow["steps"][-1]
    assert summary["task"] == "summarize"
    assert summary["result"]["count"] == 3
    assert sorted(r["processed"] for r in summary["result"]["results"]) == [
        "part-0",
        "part-1",
        "part-2",
    ]


async def test_a_failing_middle_step_fails_the_workflow_and_the_rest_never_runs(
    async_api: AsyncGraphQL,
) -> None:
    started = await run(
        async_api,
        {"chain": [process(1), task("summarize", {"fail": True}), process(3)]},
    )

    workflow = await wait_done(async_api, started["id"])

    first, failing, third = workflow["steps"]
    assert workflow["state"] == "FAILURE"
    assert workflow["failedStep"] == {"id": failing["id"], "task": "summarize"}
    assert first["state"] == "SUCCESS" and failing["state"] == "FAILURE"
    assert third["state"] == "REVOKED" and third["startedAt"] is None
    assert third["error"]["type"] == "Skipped"


async def test_cancel_mid_chain_revokes_what_has_not_run(async_api: AsyncGraphQL) -> None:
    started = await run(
        async_api,
        {
            "chain": [
                task("generate_report", {"userId": 1, "steps": 10, "stepDelay": 0.1}),
                process(2),
                process(3),
            ]
        },
    )
    first_id = started["steps"][0]["id"]
    await async_api.wait(first_id, lambda job: job["state"] in ("STARTED", "PROGRESS"))

    cancelled = (await async_api.data(CANCEL, {"id": started["id"]}))["cancelWorkflow"]

    assert cancelled["state"] == "REVOKED"
    assert [s["state"] for s in cancelled["steps"][1:]] == ["REVOKED", "REVOKED"]
    workflow = await wait_done(async_api, started["id"])
    first, second, third = workflow["steps"]
    assert first["state"] == "SUCCESS", "a running step finishes without terminate"
    assert second["startedAt"] is None and third["startedAt"] is None
    assert workflow["state"] == "REVOKED"


async def test_the_subscription_streams_every_step_to_the_end(async_api: AsyncGraphQL) -> None:
    started = await run(
        async_api,
        {
            "chain": [
                task("generate_report", {"userId": 3, "steps": 5, "stepDelay": 0.05}),
                {"group": [process("a"), process("b")]},
                {"task": {"name": "summarize", "resultTo": "results", "weight": 2}},
            ]
        },
    )

    stream = await graphql_transport_ws(async_api.base_url, WATCH, {"id": started["id"]})

    assert stream.completed and not stream.errors
    seen = [r["data"]["workflow"] for r in stream.results]
    sequences = [w["sequence"] for w in seen]
    assert sequences == sorted(set(sequences)), f"sequences must grow strictly: {sequences}"
    progress = [w["progress"] for w in seen]
    assert progress == sorted(progress) and progress[-1] == 100
    assert seen[-1]["state"] == "SUCCESS" and seen[-1]["done"]
    assert any(0 < p < 100 for p in progress), "the aggregate progress moves in between"
    assert seen[0]["steps"][1]["state"] == "PENDING", "subscribed while the first step runs"
    # No step's state change is lost: each later step was seen PENDING, STARTED, SUCCESS.
    for index in (1, 2, 3):
        states = [w["steps"][index]["state"] for w in seen]
        changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
        assert changes == ["PENDING", "STARTED", "SUCCESS"], states


def _leaves(shape: dict[str, Any]) -> list[str]:
    """The step ids of a shape, depth first."""
    ((kind, value),) = shape.items()
    if kind == "step":
        return [value]
    if kind == "chord":
        return [s for node in value["header"] for s in _leaves(node)] + _leaves(value["body"])
    return [s for node in value for s in _leaves(node)]


async def test_the_shape_is_the_tree_given_with_every_step_once(
    async_api: AsyncGraphQL, settings: Settings
) -> None:
    summarize = {"name": "summarize", "resultTo": "results"}
    started = await run(
        async_api,
        {
            "chain": [
                process("first", delay=0.5),
                {"group": [process("a"), process("b")]},
                {"chord": {"group": [process("c"), process("d")], "then": summarize}},
            ]
        },
    )
    ids = [step["id"] for step in started["steps"]]
    first, a, b, c, d, last = ids
    expected = {
        "chain": [
            {"step": first},
            {"group": [{"step": a}, {"step": b}]},
            {"chord": {"header": [{"step": c}, {"step": d}], "body": {"step": last}}},
        ]
    }
    assert started["shape"] == expected
    assert _leaves(started["shape"]) == ids and len(set(ids)) == 6, "each step once, in order"

    stream = await graphql_transport_ws(async_api.base_url, WATCH, {"id": started["id"]})

    assert stream.completed and not stream.errors
    seen = [r["data"]["workflow"] for r in stream.results]
    assert len(seen) > 1, "updates came from events, not only the first read"
    assert all(w["shape"] == expected for w in seen)
    assert seen[-1]["state"] == "SUCCESS"
    # A record written before the shape was kept reads as null, and reads on.
    client = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        assert await client.hdel(workflow_key(started["id"]), "shape") == 1
    finally:
        await client.aclose()
    old = (await async_api.data(READ, {"id": started["id"]}))["workflow"]
    assert old["shape"] is None and [s["id"] for s in old["steps"]] == ids
    assert old["state"] == "SUCCESS"


async def test_invalid_trees_are_refused_with_paths_and_nothing_is_enqueued(
    async_api: AsyncGraphQL,
) -> None:
    newest = await async_api.data("{ jobs(first: 1) { nodes { id } } }")
    cases = [
        (process(1) | {"task": {"name": "no_such_task"}}, "input.root.task.name"),
        ({"group": []}, "input.root.group"),
        (
            {"chain": [process(1), task("generate_report", resultTo="userId")]},
            "input.root.chain.1.task.resultTo",
        ),
        (
            {"chain": [process(1), task("generate_report", {"steps": 0}, resultTo="userId")]},
            "input.root.chain.1.task.input.steps",
        ),
        ({"group": [process(i) for i in range(101)]}, "input.root"),
    ]
    for root, path in cases:
        error = await async_api.error(RUN, {"input": {"root": root}})
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        assert path in [f["path"] for f in error["extensions"]["fields"]], error

    assert await async_api.data("{ jobs(first: 1) { nodes { id } } }") == newest


@pytest.fixture(scope="module", autouse=True)
def control(settings: Settings, worker: subprocess.Popen[bytes]) -> Iterator[Celery]:
    """The session worker, grown by one pool process for this module's failure stories: two
    steps run beside a third that fails, three at once. Celery starts the process at its
    pool's next upkeep (every 5 s), so it is asked for with the module's first test and the
    stories wait for it (:func:`_three_at_once`). Shrunk back after the module (the
    heartbeat's concurrency is the configured one, unchanged)."""
    app = create_celery_app(settings, producer=True)
    assert app.control.pool_grow(1, reply=True, timeout=5, limit=1), "the pool did not grow"
    try:
        yield app
    finally:
        app.control.pool_shrink(1, reply=True, timeout=5, limit=1)
        app.close()


async def _three_at_once(control: Celery, within: float = 15) -> None:
    """Until the worker's pool has three processes up, each ready for a job."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        stats = control.control.inspect(timeout=1, limit=1).stats() or {}
        if any(w["pool"]["writes"]["inqueues"]["total"] >= 3 for w in stats.values()):
            return
        assert asyncio.get_running_loop().time() < deadline, f"the pool did not grow: {stats}"
        await asyncio.sleep(0.1)


def _failing_beside(*siblings: dict[str, Any]) -> dict[str, Any]:
    """A group of ``siblings`` and a step that fails for good (an .invalid address) once
    they have all started: behind a short first step, not in a race with their starts."""
    bounce = task("send_email", {"to": "eve@nowhere.invalid", "subject": "Hi", "body": "."})
    return {"group": [*siblings, {"chain": [process("first", delay=1), bounce]}]}


def _at(moment: str) -> datetime:
    return datetime.fromisoformat(moment)


async def test_a_failed_step_waits_for_its_running_siblings_by_default(
    async_api: AsyncGraphQL, control: Celery
) -> None:
    await _three_at_once(control)
    slow = (process("a", delay=2.5), process("b", delay=2.5))
    started = await run(async_api, _failing_beside(*slow))
    assert started["onFailure"] == "WAIT", "the default, as before the option"
    siblings = [step["id"] for step in started["steps"][:2]]

    failed = await async_api.wait(started["steps"][3]["id"], lambda job: job["done"])
    seen = (await async_api.data(READ, {"id": started["id"]}))["workflow"]
    workflow = await wait_done(async_api, started["id"])

    assert failed["state"] == "FAILURE"
    assert seen["state"] == "FAILURE" and not seen["done"], "failed at once, done later"
    assert workflow["failedStep"]["id"] == failed["id"] and workflow["state"] == "FAILURE"
    a, b = (step for step in workflow["steps"] if step["id"] in siblings)
    assert a["state"] == b["state"] == "SUCCESS", "the running siblings ran to their end"
    for sibling in (a, b):  # it failed while both ran
        assert _at(sibling["startedAt"]) < _at(failed["finishedAt"]) < _at(sibling["finishedAt"])
    last = max(_at(a["finishedAt"]), _at(b["finishedAt"]))
    assert abs(_at(workflow["finishedAt"]) - last).total_seconds() < 0.01, "done as both ended"


async def test_a_fail_fast_workflow_stops_its_running_siblings_at_the_first_failure(
    async_api: AsyncGraphQL, control: Celery
) -> None:
    await _three_at_once(control)
    report = task("generate_report", {"userId": 1, "steps": 50, "stepDelay": 0.1})
    started = await run(
        async_api, _failing_beside(process("slow", delay=5), report), onFailure="FAIL_FAST"
    )
    assert started["onFailure"] == "FAIL_FAST"
    siblings = [step["id"] for step in started["steps"][:2]]

    workflow = await wait_done(async_api, started["id"], within=20)

    failed = workflow["failedStep"]
    assert workflow["state"] == "FAILURE" and failed["task"] == "send_email"
    steps = {step["id"]: step for step in workflow["steps"]}
    late = _at(workflow["finishedAt"]) - _at(steps[failed["id"]]["finishedAt"])
    assert late.total_seconds() < 2, f"done {late} after the failure"
    for sibling in siblings:
        step = steps[sibling]
        assert step["state"] == "REVOKED" and step["startedAt"], step
        assert step["error"]["type"] == "Terminated" and step["result"] is None, step
    # Stopped, not only recorded so: no process of the worker runs them any more.
    for _ in range(40):
        active = control.control.inspect(timeout=1, limit=1).active() or {}
        if not {job["id"] for jobs in active.values() for job in jobs} & set(siblings):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"a sibling still runs: {active}")
