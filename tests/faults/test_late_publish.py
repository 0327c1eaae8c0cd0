"""A publish that timed out lands later: the job its client was told was not sent never runs.

Issue 29, item 3. With a broker other than the records' Redis (RabbitMQ here), the API answers
SERVICE_UNAVAILABLE when the broker does not take a message within ``JOBQL_PUBLISH_TIMEOUT``,
but Celery's producer goes on with the publish on its thread, and bytes already written sit in
the network: the message can still reach the broker after the answer. The record decides:
the API withdraws the job (record, indexes and idempotency key go, a marker stays for the
record's lifetime), and a worker that gets its message later finds the marker and drops it
unrun (``tasks.core.events.started``); a job a worker started before the withdrawal stays, and
is answered as enqueued.

Here the API reaches RabbitMQ through a loopback proxy that stalls (a partition: every
connection stays up, nothing crosses it) and then heals, delivering what it held; the worker
talks to RabbitMQ directly. Each round sends mutations into a stall and heals it after
``heal`` seconds: before the publish timeout (answered, run once), around it (either answer,
exact), or past it (refused, and the messages land late). Exact means: every answered job
ran once; every refused one left no record and never ran, although its message reached the
worker (counted from the worker's log); nothing is left on the queue. On the code without the
marker check the refused jobs' late messages are adopted and run.

A stack of this module's own (Valkey, a virtual host, a worker, the API); skipped, with the
reason, where no RabbitMQ is reachable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from kombu import Connection

from devtools.valkey import EmbeddedValkey
from tasks.core.records import job_key
from tasks.core.settings import Settings
from tests.conftest import running_api, running_worker, service_env
from tests.support.answers import Answer, timed_enqueue
from tests.support.ledger import FULL, Ledger, scale
from tests.support.native_tasks import RUNS_KEY
from tests.support.proxy import LoopbackProxy
from tests.support.servers import rabbitmq_unavailable, rabbitmq_vhost

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        rabbitmq_unavailable() is not None,
        reason=f"{rabbitmq_unavailable()}; the late publish on RabbitMQ is not tried",
    ),
]

READ = "query($id: ID!) { job(id: $id) { state attempts } }"
PUBLISH_TIMEOUT = Settings(env="test").publish_timeout
# What the worker logs when it drops a withdrawn job's message (tasks.core.events.started).
SKIPPED = "was withdrawn unsent; skipping its late message"
# Seconds from the first mutation of a round to the heal: before the publish timeout, around
# it, and well past it (the messages then land after their refusal).
HEALS = [0.5, PUBLISH_TIMEOUT - 0.1, PUBLISH_TIMEOUT + 0.1, 2.5, 4.0, 8.0] if FULL else [2.5]
AT_ONCE = scale(4, 8)  # mutations sent into each stall together
CONNECT_TIMEOUT = 5.0  # the API's: past the smallest run's heal
WORKER = "late-publish-worker"


@dataclass(frozen=True)
class Stack:
    records: EmbeddedValkey
    proxy: LoopbackProxy
    amqp_url: str
    api_url: str
    worker_log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("late-publish")
    records = EmbeddedValkey(data_dir / "valkey").start()
    try:
        with rabbitmq_vhost() as amqp_url:
            host, vhost = amqp_url.removeprefix("amqp://").split("/", 1)
            proxy = LoopbackProxy(int(host.rsplit(":", 1)[1])).start()
            worker_env = service_env(records.url, data_dir, JOBQL_BROKER_URL=amqp_url)
            api_env = service_env(
                records.url,
                data_dir,
                JOBQL_BROKER_URL=f"amqp://127.0.0.1:{proxy.port}/{vhost}",
                # A publish that opens a connection in the stall waits out its handshake
                # (else it fails after 1 s and never lands): every publish is then held.
                JOBQL_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
            )
            settings = Settings(redis_url=records.url, data_dir=data_dir, env="test")
            try:
                with (
                    running_worker(worker_env, data_dir, settings, name=WORKER),
                    running_api(api_env, data_dir) as api,
                ):
                    yield Stack(records, proxy, amqp_url, api.base_url, data_dir / f"{WORKER}.log")
            finally:
                proxy.stop()
    finally:
        records.stop()


async def _round(http: httpx.AsyncClient, proxy: LoopbackProxy, heal: float) -> list[Answer]:
    """``AT_ONCE`` mutations into a stall that heals ``heal`` s after they were sent."""
    await asyncio.to_thread(proxy.set_mode, "stall")
    try:
        sends = [asyncio.create_task(timed_enqueue(http)) for _ in range(AT_ONCE)]
        await asyncio.sleep(heal)
    finally:
        await asyncio.to_thread(proxy.set_mode, "forward")
    return list(await asyncio.gather(*sends))


async def _settled(http: httpx.AsyncClient, job_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        body = await http.post("/graphql", json={"query": READ, "variables": {"id": job_id}})
        job = body.json()["data"]["job"]
        if job is not None and job["state"] == "SUCCESS":
            assert job["attempts"] == 1, job
            return
        assert time.monotonic() < deadline, f"job {job_id} never succeeded: {job}"
        await asyncio.sleep(0.1)


def _queued(amqp_url: str) -> int:
    """Messages waiting on the worker's queue."""
    with Connection(amqp_url) as connection:  # type: ignore[no-untyped-call]
        declared = connection.default_channel.queue_declare("jobql", passive=True)
        return int(declared.message_count)


def _withdrawn(client: redis.Redis) -> set[str]:
    """The jobs whose enqueue was answered SERVICE_UNAVAILABLE and taken back."""
    return {
        key.removesuffix(":unsent").rsplit(":", 1)[1]
        for key in client.scan_iter("*:unsent", count=1000)
    }


async def test_a_publish_that_lands_after_its_refusal_never_runs(
    stack: Stack, ledger: Ledger
) -> None:
    client = redis.Redis.from_url(stack.records.url, decode_responses=True)
    answers: list[Answer] = []
    try:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
            # The producer's connections open, as many as at once, before the first stall.
            for warm in await asyncio.gather(*(timed_enqueue(http) for _ in range(AT_ONCE))):
                assert warm.job_id, warm
                await _settled(http, warm.job_id)
            for index, heal in enumerate(HEALS):
                if index:
                    await asyncio.sleep(1.2)  # past the producer's fail-fast second
                answers += await _round(http, stack.proxy, heal)
            ids = [a.job_id for a in answers if a.job_id]
            for job_id in ids:
                await _settled(http, job_id)
        refused = [a for a in answers if not a.job_id]
        assert {a.code for a in refused} <= {"SERVICE_UNAVAILABLE"}, answers
        withdrawn = _withdrawn(client)
        assert len(withdrawn) == len(refused), (withdrawn, answers)
        # Every late message that will land has landed and was dropped: the worker said so.
        deadline = time.monotonic() + 10
        while (skipped := stack.worker_log.read_text().count(SKIPPED)) < len(withdrawn):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        while _queued(stack.amqp_url):
            assert time.monotonic() < deadline + 10, "a message stayed on the queue"
            await asyncio.sleep(0.2)

        for job_id in withdrawn:
            assert not client.exists(job_key(job_id)), f"withdrawn job {job_id} has a record"
            assert client.llen(RUNS_KEY + job_id) == 0, f"withdrawn job {job_id} ran"
        for job_id in ids:
            assert client.llen(RUNS_KEY + job_id) == 1, f"job {job_id} did not run exactly once"
        if not FULL:
            # Healed past the timeout, within the connect timeout: every refused publish was
            # held, not failed, so each one's message reached the worker after its refusal
            # and was dropped there.
            assert refused and skipped == len(refused), (skipped, answers)
    finally:
        client.close()

    slowest = max(a.seconds for a in answers)
    assert slowest <= PUBLISH_TIMEOUT + 1.0, f"an answer took {slowest:.2f} s"
    ledger.submitted = len(answers)
    ledger.terminal["SUCCESS"] = len(ids)
    ledger.rejected["SERVICE_UNAVAILABLE"] = len(refused)
    ledger.notes.append(
        f"{AT_ONCE} mutations into each stall, healed after {HEALS} s; {skipped} of "
        f"{len(refused)} refused publishes reached the worker after their refusal and were "
        f"dropped unrun; slowest answer {slowest:.2f} s"
    )
    ledger.settle()
