"""Job records and the broadcast on a Redis Cluster: three Valkey primaries, no replicas
(and, for the failover test, a stack of its own with three primaries and three replicas).

Celery's broker stays a single Valkey (its Redis transport has no cluster support); the
records and their events live on the cluster (``JOBQL_RECORDS_URL``), spread over 16 hash
tags, events on sharded pub/sub. The stack is this module's own, so restarting a primary
cannot disturb the rest of the suite.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from devtools.valkey import EmbeddedValkey, EmbeddedValkeyCluster
from gql.live.broadcast import JobBroadcast
from gql.live.shards import ShardedPubSubBackend
from tasks.core import records, slots
from tasks.core.records import JobSnapshot
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, running_api, running_worker, service_env
from tests.live.test_live import _watch_until_progress
from tests.live.test_subscriptions import WATCH, _assert_well_ordered, _report
from tests.support.clients import graphql_transport_ws, resubscribing, sse
from tests.support.ledger import FULL, Ledger, scale

pytestmark = pytest.mark.slow

EVERY_JOB = "subscription { jobs { id state } }"
ENQUEUE = """mutation { enqueue(task: "process_data", input: {data: 1, delay: 0}) { id } }"""


@dataclass(frozen=True)
class Services:
    cluster: EmbeddedValkeyCluster
    broker: EmbeddedValkey
    url: str


@contextmanager
def _stack(data_dir: Path, replicas: int = 0) -> Iterator[Services]:
    """A broker, a cluster for the records, a worker and an API over them."""
    broker = EmbeddedValkey(data_dir / "broker").start()
    cluster = EmbeddedValkeyCluster(data_dir / "records", replicas=replicas)
    try:
        cluster.start()
        env = service_env(
            broker.url,
            data_dir,
            # The failover stack names every node, as a deployment should: its seed can die.
            JOBQL_RECORDS_URL=cluster.seeds if replicas else cluster.url,
            JOBQL_RECORDS_CLUSTER="true",
            JOBQL_KEEP_ALIVE_INTERVAL="0.5",
        )
        settings = Settings(redis_url=broker.url)
        with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
            yield Services(cluster, broker, api.base_url)
    finally:
        cluster.stop()
        broker.stop()


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with _stack(tmp_path_factory.mktemp("cluster")) as stack:
        yield stack


@pytest.fixture
async def api(services: Services) -> AsyncIterator[AsyncGraphQL]:
    async with AsyncGraphQL(services.url) as client:
        yield client


def _job_key(job_id: str) -> str:
    """A job's key as the services name it (16 tags on a cluster)."""
    return records.job_prefix(slots.tag_for(job_id, 16)) + job_id


def _node_of(cluster: EmbeddedValkeyCluster, key: str) -> int:
    """Which of the cluster's nodes serves ``key``'s slot."""
    client = redis.RedisCluster.from_url(cluster.url)
    try:
        node = client.get_node_from_key(key)
        return next(i for i, n in enumerate(cluster.nodes) if n.port == node.port)
    finally:
        client.close()


async def test_jobs_run_listed_and_watched_through_the_cluster(
    services: Services, api: AsyncGraphQL
) -> None:
    seen: list[dict[str, Any]] = []
    every = asyncio.create_task(
        graphql_transport_ws(
            services.url, EVERY_JOB, {}, within=60, on_result=lambda r: seen.append(r["data"])
        )
    )
    # What an admin's firehose hears: every owner's channel of each tag, on its shard.
    admins = JobBroadcast(
        ShardedPubSubBackend(services.cluster.url, settings=Settings(env="test")), queue_limit=1024
    )
    await admins.connect()
    channels = [records.every_owner_channel(tag) for tag in slots.tags_for(16)]
    every_owner = admins.subscribe(*channels)
    heard = await every_owner.__aenter__()
    await asyncio.sleep(1.0)  # the firehose listens on each of the 16 tags' channels
    job_id = await _report(api, steps=8, delay=0.05, countdown=0.3)
    stream = await graphql_transport_ws(services.url, WATCH, {"id": job_id})
    assert stream.completed and not stream.errors, stream.errors
    assert [j["state"] for j in stream.jobs][:2] == ["PENDING", "STARTED"]
    assert stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)

    ids = [(await api.data(ENQUEUE))["enqueue"]["id"] for _ in range(12)]
    for each in ids:
        assert (await api.wait_done(each))["state"] == "SUCCESS"
    keys = [_job_key(each) for each in [job_id, *ids]]
    assert len({_node_of(services.cluster, key) for key in keys}) > 1, "spread over the nodes"
    listed = await api.data("{ jobs(first: 100) { edges { node { id state } } } }")
    newest_first = [edge["node"]["id"] for edge in listed["jobs"]["edges"]]
    assert newest_first[:13] == [*reversed(ids), job_id]
    done = await api.data(
        "{ jobs(first: 5, filter: {states: [SUCCESS]}) { edges { node { id } } } }"
    )
    assert [edge["node"]["id"] for edge in done["jobs"]["edges"]] == list(reversed(ids))[:5]

    every.cancel()
    with pytest.raises(asyncio.CancelledError):
        await every
    finished = {event["jobs"]["id"] for event in seen if event["jobs"]["state"] == "SUCCESS"}
    assert finished >= {job_id, *ids}, "the firehose hears every tag's shard"
    owners = {}
    while len(heard):
        event = await heard.get()
        if isinstance(event, JobSnapshot) and event.done:
            owners[event.id] = event.owner
    await every_owner.__aexit__(None, None, None)
    await admins.disconnect()
    assert {each: owners.get(each) for each in [job_id, *ids]} == dict.fromkeys(
        [job_id, *ids], "anonymous"
    ), "every owner's channels carry each job's events on its shard"
    broker = redis.Redis.from_url(services.broker.url)
    try:
        assert not broker.keys("jobql:job:*"), "no job record on the broker's Valkey"
    finally:
        broker.close()


async def test_a_job_and_its_watchers_reach_the_end_across_a_primary_restart(
    services: Services, api: AsyncGraphQL
) -> None:
    job_id = await _report(api, steps=60, delay=0.05)
    watch_ws = await _watch_until_progress(graphql_transport_ws, services.url, job_id)
    watch_sse = await _watch_until_progress(sse, services.url, job_id)
    node = _node_of(services.cluster, _job_key(job_id))

    await asyncio.to_thread(services.cluster.restart, node, 0.5)

    for watch in (watch_ws, watch_sse):
        stream: Any = await asyncio.wait_for(watch, 90)
        assert stream.completed and not stream.errors, stream.errors
        assert stream.jobs[-1]["state"] == "SUCCESS"
        _assert_well_ordered(stream.jobs)
    assert (await api.wait_done(job_id))["state"] == "SUCCESS"
    stats = (await api.http.get("/health/stats")).json()
    assert stats["reconnects"] >= 1


async def test_watchers_follow_a_job_whose_slot_moves_to_another_primary(
    services: Services, api: AsyncGraphQL
) -> None:
    job_id = await _report(api, steps=60, delay=0.05)
    watch = await _watch_until_progress(graphql_transport_ws, services.url, job_id)
    key = _job_key(job_id)
    before = (await api.http.get("/health/stats")).json()["reconnects"]
    source = _node_of(services.cluster, key)

    target = (source + 1) % len(services.cluster.nodes)
    await asyncio.to_thread(services.cluster.move_slot, key_slot(key.encode()), target)

    assert _node_of(services.cluster, key) == target
    stream: Any = await asyncio.wait_for(watch, 90)
    assert stream.completed and not stream.errors, stream.errors
    assert stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)
    after = (await api.http.get("/health/stats")).json()["reconnects"]
    assert after > before, "the reader followed the slot (and told its subscribers to resync)"
    again = await graphql_transport_ws(services.url, WATCH, {"id": job_id})
    assert again.completed and again.jobs[-1]["state"] == "SUCCESS"


@pytest.mark.parametrize(
    "victim",
    [
        1,
        # A minute more of make test's longest pass; the seeds' parsing and the error a dead
        # one raises have fast tests (tests/tasks/core/test_redis_clients.py).
        pytest.param(0, marks=pytest.mark.skipif(not FULL, reason="make reliability runs it")),
    ],
    ids=["another primary", "the first seed named"],
)
async def test_a_primary_killed_under_load_fails_over_to_its_replica_and_nothing_is_lost(
    tmp_path: Path, ledger: Ledger, victim: int
) -> None:
    """3 primaries, 3 replicas; a steady load of jobs, each watched over graphql-transport-ws;
    SIGKILL a primary mid-stream. Its replica takes over after the node timeout (2 s).
    Killing the first node ``JOBQL_RECORDS_URL`` names: a worker pool child that makes its
    cluster client after it (on its first job) finds the cluster from another seed."""
    with _stack(tmp_path, replicas=1) as stack:
        async with AsyncGraphQL(stack.url) as client:
            await _fail_over_under_load(stack, client, ledger, victim)


async def _watch_retrying(url: str, job_id: str, retries: list[str]) -> Any:
    """A subscriber as a client written to the guide behaves: it reconnects when the socket
    drops, and subscribes again when told SERVICE_UNAVAILABLE ("try again shortly")."""
    async with asyncio.timeout(60):
        while True:
            stream = await resubscribing([url], WATCH, {"id": job_id})
            codes = {e.get("extensions", {}).get("code") for e in stream.errors}
            if codes != {"SERVICE_UNAVAILABLE"}:
                return stream
            retries.append(job_id)
            await asyncio.sleep(0.2)


async def _fail_over_under_load(
    stack: Services, api: AsyncGraphQL, ledger: Ledger, victim: int
) -> None:
    # Each primary serves a third of the slots, and so about a third of the 16 tags.
    on_victim = {t for t in slots.tags_for(16) if _node_of(stack.cluster, records.job_prefix(t))
                 == victim}  # fmt: skip
    assert on_victim
    accepted: list[str] = []
    refused: Counter[str] = Counter()
    watches: list[asyncio.Task[Any]] = []
    refusals: list[float] = []
    successes: list[float] = []
    killed_at = 0.0
    retries: list[str] = []
    jobs = scale(60, 100)  # a fresh stack: one page of 100 lists them all
    for index in range(jobs):
        if index == jobs // 4:
            await asyncio.to_thread(stack.cluster.kill, victim)
            killed_at = time.monotonic()
        body = await api.post(ENQUEUE)
        now = time.monotonic()
        if body.get("errors"):
            refused[body["errors"][0].get("extensions", {}).get("code", "no code")] += 1
            refusals.append(now)
        else:
            job_id = body["data"]["enqueue"]["id"]
            accepted.append(job_id)
            successes.append(now)
            watches.append(asyncio.create_task(_watch_retrying(stack.url, job_id, retries)))
        await asyncio.sleep(0.1)
    promoted = await asyncio.to_thread(stack.cluster.wait_failover, victim)
    assert promoted >= stack.cluster.primaries

    assert set(refused) <= {"SERVICE_UNAVAILABLE"}, refused
    await asyncio.wait(watches, timeout=30)
    stalled = [(j, slots.tag_for(j, 16) in on_victim, (await api.job(j) or {}).get("state"))
               for j, w in zip(accepted, watches, strict=True) if not w.done()]  # fmt: skip
    assert not stalled, f"(job, on the killed primary, state) of stalled subscribers: {stalled}"
    streams = [w.result() for w in watches]
    for job_id, stream in zip(accepted, streams, strict=True):
        assert stream.completed and not stream.errors, (job_id, stream.errors)
        assert stream.jobs[-1]["state"] == "SUCCESS", (job_id, stream.jobs)
        assert [j["state"] for j in stream.jobs].count("SUCCESS") == 1, stream.jobs
    finals = [(await api.wait_done(job_id, within=30))["state"] for job_id in accepted]
    assert finals == ["SUCCESS"] * len(accepted)
    listed = {e["node"]["id"] for e in (await api.data(
        "{ jobs(first: 100) { edges { node { id } } } }"))["jobs"]["edges"]}  # fmt: skip
    assert listed == set(accepted), "no record of a refused mutation, none missing"
    hit = [j for j in accepted if slots.tag_for(j, 16) in on_victim]
    assert hit, "some of the jobs live on the killed primary's slots"

    # Only jobs whose id hashes to the killed primary's slots are refused, so the window
    # runs from the first refusal to the first success after the last one.
    last_refusal = max(refusals, default=killed_at)
    first_success = min((t for t in successes if t > last_refusal), default=last_refusal)
    window = first_success - min(refusals, default=first_success)
    since_kill = first_success - killed_at
    ledger.submitted = jobs
    ledger.terminal["SUCCESS"] = len(accepted)
    ledger.rejected.update(refused)
    ledger.subscribers = ledger.subscribers_ended = len(streams)
    ledger.notes.append(
        f"{len(hit)} jobs on the killed primary's slots; mutations refused for {window:.1f} s "
        f"(first refusal to first success after the last), all served {since_kill:.1f} s after "
        f"the kill, {sum(refused.values())} refusals, "
        f"{len(retries)} subscribes answered SERVICE_UNAVAILABLE and retried"
    )
    ledger.settle()
