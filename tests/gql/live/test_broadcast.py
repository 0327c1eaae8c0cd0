"""The fan-out and its pub/sub connection, in process against a Valkey of their own.

The Valkey is this module's alone: killing or pausing its pub/sub clients cannot disturb the
rest of the suite.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from devtools.processes import free_port
from devtools.valkey import EmbeddedValkey
from gql.live.broadcast import RESYNC, EventQueue, JobBroadcast, RedisPubSubBackend, Resync
from tasks.core import records
from tasks.core.records import JobSnapshot
from tasks.core.settings import Settings

CHANNEL = records.job_channel("watched")


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedValkey(Path(tmp_path_factory.mktemp("broadcast")), persist=False).start()
    yield server.url
    server.stop()


@pytest.fixture
async def redis_client(valkey_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(valkey_url, decode_responses=True)
    yield client
    await client.aclose()


async def _broadcast(url: str, **options: float) -> JobBroadcast:
    backend = RedisPubSubBackend(url, settings=Settings(env="test"), **options)
    broadcast = JobBroadcast(backend, queue_limit=64)
    await broadcast.connect()
    return broadcast


@pytest.fixture
async def broadcast(valkey_url: str) -> AsyncIterator[JobBroadcast]:
    broadcast = await _broadcast(valkey_url, connect_timeout=0.5)
    assert broadcast.backend.connected.is_set()
    yield broadcast
    await broadcast.disconnect()


def _event(job_id: str) -> str:
    fields = records.new_record(
        job_id=job_id, task="t", owner="o", queue="q", input_json={}, created_at=records.now()
    )
    return records.dumps(fields)


async def _subscribers_on_redis(client: aioredis.Redis, channel: str, expected: int) -> int:
    """``PUBSUB NUMSUB`` once it says ``expected`` (or after 2 s): an UNSUBSCRIBE is sent on
    the reader's connection and asked about on another, so the answer may lag a moment."""
    for _ in range(200):
        ((_, count),) = await client.pubsub_numsub(channel)
        if count == expected:
            break
        await asyncio.sleep(0.01)
    return int(count)


async def _next(queue: EventQueue) -> JobSnapshot | Resync:
    async with asyncio.timeout(5):
        return await queue.get()


async def test_subscribe_returns_only_once_redis_confirmed_it(
    broadcast: JobBroadcast, redis_client: aioredis.Redis
) -> None:
    confirmed = asyncio.Event()

    async def watch() -> JobSnapshot | Resync:
        async with broadcast.subscribe(CHANNEL) as events:
            confirmed.set()
            return await _next(events)

    await redis_client.client_pause(500)  # Redis holds commands
    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    assert not confirmed.is_set(), "the SUBSCRIBE is sent but Redis has not confirmed it yet"

    await asyncio.wait_for(confirmed.wait(), 5)
    # From the moment subscribe returned, Redis counts the subscription.
    assert await redis_client.publish(CHANNEL, _event("first")) == 1
    snapshot = await watcher
    assert isinstance(snapshot, JobSnapshot) and snapshot.id == "first"


async def test_the_last_subscriber_leaving_unsubscribes_and_leaves_nothing(
    broadcast: JobBroadcast, redis_client: aioredis.Redis
) -> None:
    async with broadcast.subscribe(CHANNEL), broadcast.subscribe(CHANNEL) as events:
        assert await redis_client.publish(CHANNEL, _event("one")) == 1, "one Redis subscription"
        assert isinstance(await _next(events), JobSnapshot)
        assert broadcast.stats()["subscribers"] == 2
        assert broadcast.stats()["pending_events"] == 1, "the other subscriber's copy waits"

    assert await _subscribers_on_redis(redis_client, CHANNEL, 0) == 0
    assert broadcast.stats() == {
        "channels": 0,
        "subscribers": 0,
        "pending_events": 0,
        "locks": 0,
        "reconnects": 0,
    }


async def test_subscribers_coming_and_going_at_once_each_see_their_events(
    broadcast: JobBroadcast, redis_client: aioredis.Redis
) -> None:
    """Many first subscriptions and last departures of one channel race; none is lost."""

    async def watcher(number: int) -> None:
        for round_ in range(8):
            async with broadcast.subscribe(CHANNEL) as events:
                mine = f"{number}-{round_}"
                await redis_client.publish(CHANNEL, _event(mine))
                item = await _next(events)
                while not (isinstance(item, JobSnapshot) and item.id == mine):
                    item = await _next(events)
                await asyncio.sleep(random.random() / 500)
            await asyncio.sleep(random.random() / 500)

    await asyncio.gather(*(watcher(number) for number in range(30)))

    assert await _subscribers_on_redis(redis_client, CHANNEL, 0) == 0
    assert broadcast.stats()["channels"] == broadcast.stats()["locks"] == 0


async def test_the_reader_resyncs_subscribers_after_redis_kills_its_connection(
    broadcast: JobBroadcast, redis_client: aioredis.Redis
) -> None:
    async with broadcast.subscribe(CHANNEL) as events:
        # What Redis does to a pub/sub reader past its output buffer limit.
        assert await redis_client.client_kill_filter(_type="pubsub") >= 1

        assert await _next(events) is RESYNC
        assert broadcast.stats()["reconnects"] == 1
        assert broadcast.backend.connected.is_set()
        # The channel was subscribed again before the resync was announced.
        assert await redis_client.publish(CHANNEL, _event("after")) == 1
        snapshot = await _next(events)
        assert isinstance(snapshot, JobSnapshot) and snapshot.id == "after"


async def test_a_connection_that_stops_answering_is_replaced(
    valkey_url: str, redis_client: aioredis.Redis
) -> None:
    broadcast = await _broadcast(valkey_url, connect_timeout=0.5, idle_ping=0.2)
    try:
        async with broadcast.subscribe(CHANNEL) as events:
            # A hung server: the connection stays open but nothing comes back, not a PONG.
            await redis_client.client_pause(1500)
            await asyncio.sleep(0.7)
            assert not broadcast.backend.connected.is_set(), "silence counts as a lost link"

            assert await _next(events) is RESYNC
            assert broadcast.stats()["reconnects"] == 1
    finally:
        await broadcast.disconnect()


async def test_subscribing_while_redis_is_down_fails_at_once_and_leaves_nothing() -> None:
    broadcast = await _broadcast(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    try:
        assert not broadcast.backend.connected.is_set()
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(1), broadcast.subscribe(CHANNEL):
                pass
        assert broadcast.stats()["channels"] == broadcast.stats()["locks"] == 0
    finally:
        await broadcast.disconnect()
