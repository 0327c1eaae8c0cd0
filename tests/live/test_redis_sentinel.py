"""Redis behind Sentinel: the primary dies mid-job, the replica takes over, nothing stalls.

A primary, a replica and three sentinels (``valkey-server --sentinel``) run in the test's
directory. Job records, the broadcast, Celery's broker and its results all go through the
sentinels (``sentinel://`` URLs). The primary is killed with SIGKILL while a job runs and a
subscriber watches it: the sentinels promote the replica, and the job and its subscriber
still reach the terminal state.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, GraphQL, running_api, running_worker, service_env
from tests.support.clients import Stream, graphql_transport_ws
from tests.support.ledger import Ledger
from tests.support.redis_servers import SentinelGroup, Server, sentinel_group

pytestmark = pytest.mark.slow

WATCH = "subscription($id: ID!) { job(id: $id) { state done sequence progress { current } } }"


@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    group = sentinel_group(tmp_path_factory.mktemp("sentinel"))
    yield group
    group.stop()


@pytest.fixture(scope="module")
def sentinel_api(
    group: SentinelGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GraphQL]:
    stack = tmp_path_factory.mktemp("sentinel-stack")
    env = service_env(group.url, stack, JOBQL_REDIS_SENTINEL_MASTER=group.master)
    settings = Settings(redis_url=group.url, redis_sentinel_master=group.master)
    with running_worker(env, stack, settings), running_api(env, stack) as client:
        yield client


def _master_port(group: SentinelGroup, sentinel: int = 0) -> int:
    client = redis.Redis(port=group.sentinels[sentinel].port, decode_responses=True)
    try:
        _, port = client.sentinel_get_master_addr_by_name(group.master)
        return int(port)
    finally:
        client.close()


def test_a_job_runs_through_sentinel(sentinel_api: GraphQL) -> None:
    job = sentinel_api.data("mutation { processData(input: {data: 7, delay: 0}) { id } }")
    done = sentinel_api.wait_done(job["processData"]["id"])
    assert done["state"] == "SUCCESS"
    assert done["result"]["processed"] == 7
    # The one-call enqueue (record and Celery message in one script) works behind Sentinel.
    writer = sentinel_api.http.get("/health/stats").json()["fast_paths"]["celery.message_writer"]
    assert writer["active"] is (os.environ.get("JOBQL_FAST_PATHS", "true") != "false")


async def _job_through_a_failover(
    api: GraphQL, group: SentinelGroup, primary: Server, steps: int = 30
) -> tuple[dict[str, Any], Stream, tuple[float, float]]:
    """Start a job, watch it, SIGKILL ``primary`` once it runs; the job, the stream, and
    the seconds from the kill to the subscriber's next event and to its terminal state."""
    job = api.data(
        "mutation($steps: Int!) { generateReport(input: {userId: 3, steps: $steps, "
        "stepDelay: 0.25}) { id } }",
        {"steps": steps},
    )["generateReport"]
    running = asyncio.Event()
    killed_at: list[float] = []
    ended_at: list[float] = []
    events_at: list[float] = []

    def seen(result: dict[str, Any]) -> None:
        watched = (result.get("data") or {}).get("job") or {}
        events_at.append(time.monotonic())
        if watched.get("state") == "PROGRESS":
            running.set()
        if watched.get("done"):
            ended_at.append(time.monotonic())

    async def kill_the_primary() -> None:
        await running.wait()
        await asyncio.sleep(0.5)
        primary.kill()
        killed_at.append(time.monotonic())
        # Meanwhile a mutation is answered at once: accepted, or SERVICE_UNAVAILABLE.
        async with AsyncGraphQL(api.base_url) as client:
            started = time.monotonic()
            body = await client.post("mutation { processData(input: {data: 1}) { id } }")
        assert time.monotonic() - started < 5
        codes = [error["extensions"]["code"] for error in body.get("errors") or []]
        assert codes in ([], ["SERVICE_UNAVAILABLE"]), body

    stream, _ = await asyncio.gather(
        graphql_transport_ws(api.base_url, WATCH, {"id": job["id"]}, 120, seen),
        kill_the_primary(),
    )
    assert killed_at and ended_at, "the primary was killed mid-job and the stream ended"
    resumed = next(at for at in events_at if at > killed_at[0])
    return job, stream, (resumed - killed_at[0], ended_at[0] - killed_at[0])


def _replicating(group: SentinelGroup, replica: Server) -> None:
    """Wait until ``replica`` (a restarted old primary) follows the new primary."""
    client = redis.Redis(port=replica.port, decode_responses=True)
    deadline = time.monotonic() + 30
    try:
        while True:
            info = client.info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                return
            assert time.monotonic() < deadline, f"{replica.port} never followed: {info}"
            time.sleep(0.2)
    finally:
        client.close()


async def test_the_primary_dies_mid_job_and_the_job_and_its_subscriber_finish(
    sentinel_api: GraphQL, group: SentinelGroup, ledger: Ledger
) -> None:
    """Twice: the second failover meets a worker that already lived through one."""
    assert _master_port(group) == group.primary.port
    seconds = []
    for victim, heir in ((group.primary, group.replica), (group.replica, group.primary)):
        if victim is group.replica:  # the old primary is back, as the new one's replica
            group.primary.start()
            _replicating(group, group.primary)
        job, stream, took = await _job_through_a_failover(sentinel_api, group, victim)

        assert stream.completed and not stream.errors, stream.errors
        states = [seen["state"] for seen in stream.jobs]
        assert states[-1] == "SUCCESS", states
        sequences = [seen["sequence"] for seen in stream.jobs]
        assert sequences == sorted(set(sequences)), "sequences only grow"
        assert _master_port(group) == heir.port, "the replica was promoted"
        done = sentinel_api.wait_done(job["id"])
        assert done["state"] == "SUCCESS" and done["progress"]["current"] == 30
        ledger.submitted += 1
        ledger.subscribers += 1
        ledger.subscribers_ended += 1
        ledger.terminal.update([done["state"]])
        seconds.append(took)

    ledger.settle()
    for resumed, ended in seconds:
        print(f"SIGKILL of the primary -> next event {resumed:.1f} s, SUCCESS {ended:.1f} s")  # noqa: T201
    # And the twice-promoted primary takes new jobs.
    after = sentinel_api.data("mutation { processData(input: {data: 8, delay: 0}) { id } }")
    assert sentinel_api.wait_done(after["processData"]["id"])["state"] == "SUCCESS"
