"""A broker connection blip while a job runs: the job must not start a second run meanwhile.

Issue 13: when the worker's broker connection breaks (its pub/sub connection killed, its
BRPOP connection killed, Redis restarted), Celery's consumer closes the channel and kombu
puts every unacknowledged message back on the queue, the message of the job still running
in the pool included ("Restoring 1 unacknowledged message(s)"). The reconnected consumer
then took it again and a second run started while the first still ran.

A stack of this module's own (Valkey, a worker with two pool processes, the API): its
faults do not reach the session's services. Each run of the job records its span
(``tests.support.native_tasks.SPANS_KEY``) and its side effect keyed by the job id.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, running_api, running_worker, service_env
from tests.support.clients import Stream, graphql_transport_ws
from tests.support.ledger import Ledger
from tests.support.native_tasks import EFFECTS_KEY, RUNS_KEY, SPANS_KEY

pytestmark = pytest.mark.slow

# A countdown: the subscriber is watching before the run starts, to see each STARTED.
ENQUEUE = """mutation($i: JSON!) {
  enqueue(task: "reliability.effect", input: $i, options: {countdown: 1}) { id } }"""
WATCH = "subscription($id: ID!) { job(id: $id) { state sequence attempts redelivery } }"
READ = "query($id: ID!) { job(id: $id) { state attempts } }"
PID = "query($id: ID!) { job(id: $id) { progress { data } } }"
UNACKED = "unacked"  # kombu's hash of the messages a worker holds unacknowledged


@dataclass(frozen=True)
class Stack:
    valkey: EmbeddedValkey
    api_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("blips")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(valkey.url, data_dir)
    settings = Settings(redis_url=valkey.url, data_dir=data_dir, env="test")
    try:
        with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
            yield Stack(valkey, api.base_url)
    finally:
        valkey.stop()


def _kill_brpop(client: redis.Redis) -> int:
    """Kill the worker's consuming connections (``CLIENT KILL`` of type normal, by id)."""
    ids = [c["id"] for c in client.client_list(_type="normal") if c.get("cmd") == "brpop"]
    for client_id in ids:
        client.client_kill_filter(_id=client_id)
    return len(ids)


def _blip(valkey: EmbeddedValkey, fault: str) -> None:
    if fault == "restart":
        valkey.stop()  # a graceful restart: nothing is lost, every connection breaks
        time.sleep(0.3)
        valkey.start()
        return
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        if fault == "pubsub":
            assert client.client_kill_filter(_type="pubsub") >= 1
        else:
            assert _kill_brpop(client) >= 1
    finally:
        client.close()


@dataclass
class Runs:
    """What the job's runs left in Redis once every run that started had ended."""

    pids: list[str]
    spans: list[tuple[float, ...]]  # (start, end) of each run that completed, in order
    effect: str | None
    unacked: int


async def _runs(valkey: EmbeddedValkey, job_id: str, killed: int = 0) -> Runs:
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:  # every run that started has ended and its message was acknowledged
            pids = client.lrange(RUNS_KEY + job_id, 0, -1)
            ended = client.lrange(SPANS_KEY + job_id, 0, -1)
            unacked = client.hlen(UNACKED)
            if (len(ended) == len(pids) - killed and not unacked) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        spans = sorted(tuple(map(float, span.split())) for span in ended)
        return Runs(pids, spans, client.hget(EFFECTS_KEY, job_id), unacked)
    finally:
        client.close()


async def _start(api: AsyncGraphQL, base_url: str) -> tuple[str, asyncio.Task[Stream]]:
    """A four-second job, watched from before it starts; returns once it runs."""
    job_id = (await api.data(ENQUEUE, {"i": {"seconds": 4}}))["enqueue"]["id"]
    watch = asyncio.create_task(graphql_transport_ws(base_url, WATCH, {"id": job_id}, within=60))
    await api.wait(job_id, lambda j: j["state"] == "PROGRESS", 30)
    await asyncio.sleep(0.5)
    return job_id, watch


@pytest.mark.parametrize("fault", ["pubsub", "brpop", "restart"])
async def test_a_broker_blip_mid_job_does_not_start_a_second_run_meanwhile(
    stack: Stack, fault: str, ledger: Ledger
) -> None:
    async with AsyncGraphQL(stack.api_url) as api:
        job_id, watch = await _start(api, stack.api_url)

        await asyncio.to_thread(_blip, stack.valkey, fault)

        done = await api.wait_done(job_id, 60)
        stream = await asyncio.wait_for(watch, 60)
        attempts = (await api.data(READ, {"id": job_id}))["job"]["attempts"]
    runs = await _runs(stack.valkey, job_id)

    assert done["state"] == "SUCCESS"
    assert len(runs.pids) == 1, f"the body ran {len(runs.pids)} times: {runs.spans}"
    assert attempts == 1
    assert runs.effect == runs.pids[0], "the side effect happened once, by the run"
    assert runs.unacked == 0, "the run's ack reached Redis: nothing is redelivered an hour later"
    states = [j["state"] for j in stream.jobs]
    assert stream.completed and states[-1] == "SUCCESS", states
    assert states.count("STARTED") == attempts, states
    ledger.submitted, ledger.terminal["SUCCESS"] = 1, 1
    ledger.subscribers, ledger.subscribers_ended = 1, 1
    ledger.settle()


async def test_a_held_job_whose_pool_process_then_dies_runs_again_after_it(
    stack: Stack, ledger: Ledger
) -> None:
    """The held message is not lost: a run killed after the blip is re-delivered, once."""
    async with AsyncGraphQL(stack.api_url) as api:
        job_id, watch = await _start(api, stack.api_url)
        await asyncio.to_thread(_blip, stack.valkey, "pubsub")
        await asyncio.sleep(0.5)
        first = (await api.data(PID, {"id": job_id}))["job"]["progress"]["data"]["pid"]

        os.kill(first, signal.SIGKILL)
        killed_at = time.time()

        done = await api.wait_done(job_id, 60)
        stream = await asyncio.wait_for(watch, 60)
        attempts = (await api.data(READ, {"id": job_id}))["job"]["attempts"]
    runs = await _runs(stack.valkey, job_id, killed=1)

    assert done["state"] == "SUCCESS"
    assert attempts == 2 and len(runs.pids) == 2 and runs.pids[0] == str(first)
    assert len(runs.spans) == 1 and runs.spans[0][0] >= killed_at, "the re-run began after"
    assert runs.effect == runs.pids[1], "the side effect happened once, by the second run"
    assert runs.unacked == 0
    states = [j["state"] for j in stream.jobs]
    assert stream.completed and states[-1] == "SUCCESS", states
    assert states.count("STARTED") == attempts, states
    ledger.submitted, ledger.terminal["SUCCESS"], ledger.reruns = 1, 1, 1
    ledger.subscribers, ledger.subscribers_ended = 1, 1
    ledger.settle()
