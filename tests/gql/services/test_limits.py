"""The per-owner limits on a real Valkey and in process: the rate script's arithmetic and
the subscription counts (the end-to-end story is in test_security.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from devtools.valkey import EmbeddedValkey
from gql.app import load_task_modules
from gql.schema.root import build_schema
from gql.services.auth import Principal
from gql.services.errors import RateLimited
from gql.services.limits import Limits
from gql.services.store import connect
from tasks.core import scripts
from tasks.core.app import registry
from tasks.core.settings import Settings
from tests.conftest import ROOT


@dataclass
class Connection:
    principal: Principal
    live_subscriptions: int = 0


def limits_for(valkey: EmbeddedValkey, **overrides: object) -> tuple[Settings, Limits]:
    values: dict[str, object] = {
        "env": "test",
        "redis_url": valkey.url,
        "auth_mode": "api_key",
        "api_keys": {"0" * 64: "someone"},
    }
    settings = Settings(**{**values, **overrides})  # type: ignore[arg-type]
    return settings, Limits(settings.limits, connect(settings.redis, settings))


@pytest.fixture
async def owner() -> AsyncIterator[Principal]:
    yield Principal(f"owner-{uuid.uuid4().hex[:8]}")


async def test_a_window_of_mutations_then_a_retry_hint_then_room_again(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    _, limits = limits_for(valkey, rate_limit_mutations=3, rate_limit_window_seconds=0.6)
    for _ in range(3):
        await limits.mutation(owner)
    with pytest.raises(RateLimited) as caught:
        await limits.mutation(owner)
    retry_after = caught.value.extensions["retryAfter"]
    assert caught.value.extensions["code"] == "RATE_LIMITED"
    assert 0 < retry_after <= 0.2
    await limits.mutation(Principal("somebody-else-" + owner.owner))
    await asyncio.sleep(retry_after + 0.02)
    await limits.mutation(owner)


async def test_a_limit_finer_than_a_millisecond_admits_everything(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    _, limits = limits_for(valkey, rate_limit_mutations=100_000_000)
    for _ in range(50):
        await limits.mutation(owner)


async def _spend(limits: Limits, owner: Principal) -> bool:
    try:
        await limits.mutation(owner)
    except RateLimited:
        return False
    return True


async def test_two_replicas_never_admit_more_than_the_owner_budget_together(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    # 1,000 a minute: each replica leases 10 of the owner's mutations per Redis call.
    _, one = limits_for(valkey, rate_limit_mutations=1000, rate_limit_window_seconds=60)
    _, two = limits_for(valkey, rate_limit_mutations=1000, rate_limit_window_seconds=60)
    began = time.monotonic()
    admitted = {one: 0, two: 0}
    refused: set[Limits] = set()
    while len(refused) < 2:
        for replica in (one, two):
            if await _spend(replica, owner):
                admitted[replica] += 1
            else:
                refused.add(replica)
    budget = 1000 + (time.monotonic() - began) * 1000 / 60 + 1  # a minute's worth refills
    assert 1000 - 2 * 10 <= sum(admitted.values()) <= budget
    assert admitted[one] > 100 and admitted[two] > 100  # both replicas got their share
    with pytest.raises(RateLimited) as caught:
        await one.mutation(owner)
    assert 0 < caught.value.extensions["retryAfter"] <= 0.06 * 10


async def test_a_busy_owner_asks_redis_once_per_lease_even_when_concurrent(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    _, limits = limits_for(valkey, rate_limit_mutations=100_000, rate_limit_lease=32)
    calls = await _script_calls(valkey)
    assert all(await asyncio.gather(*(_spend(limits, owner) for _ in range(64))))
    assert await _script_calls(valkey) - calls == 2  # 64 mutations, two leases of 32


async def test_a_limit_under_200_asks_redis_for_every_mutation(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    _, limits = limits_for(valkey, rate_limit_mutations=150)  # 1 % of it is under one
    calls = await _script_calls(valkey)
    for _ in range(5):
        await limits.mutation(owner)
    assert await _script_calls(valkey) - calls == 5


async def _script_calls(valkey: EmbeddedValkey) -> int:
    """EVALSHA calls Valkey has served so far (its command statistics)."""
    client = connect(valkey.url, Settings(env="test", redis_url=valkey.url))
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_without_authentication_no_owner_budget_applies(valkey: EmbeddedValkey) -> None:
    _, limits = limits_for(
        valkey, auth_mode="none", rate_limit_mutations=1, max_subscriptions_per_owner=1
    )
    anonymous = Principal("anonymous")
    for _ in range(5):
        await limits.mutation(anonymous)
    calls = await _script_calls(valkey)
    async with (
        limits.subscription(Connection(anonymous)),
        limits.subscription(Connection(anonymous)),
    ):
        pass
    assert await _script_calls(valkey) == calls, "no owner is counted in Redis"


async def test_subscriptions_are_counted_per_connection_and_per_owner(
    valkey: EmbeddedValkey,
) -> None:
    _, limits = limits_for(
        valkey, max_subscriptions_per_connection=2, max_subscriptions_per_owner=3
    )
    await limits.start()
    alice = Principal(f"alice-{uuid.uuid4().hex[:8]}")
    one, two = Connection(alice), Connection(alice)
    async with limits.subscription(one), limits.subscription(one):
        with pytest.raises(RateLimited, match="per connection"):
            async with limits.subscription(one):
                pass
        async with limits.subscription(two):
            with pytest.raises(RateLimited, match="live subscriptions"):
                async with limits.subscription(two):
                    pass
            async with limits.subscription(Connection(Principal("bob-" + alice.owner))):
                pass
    assert (one.live_subscriptions, two.live_subscriptions) == (0, 0)
    assert limits.stats() == {"subscribing_owners": 0}
    await limits.close()


async def _admitted(limits: Limits, connection: Connection) -> bool:
    try:
        await limits.admit(connection)
    except RateLimited:
        return False
    return True


async def _counts(valkey: EmbeddedValkey, owner: Principal) -> dict[str, int]:
    """Each replica's count of the owner's live subscriptions, as Valkey holds them."""
    client = connect(valkey.url, Settings(env="test", redis_url=valkey.url))
    try:
        counts = await client.hgetall(scripts.subscriptions_key(owner.owner))
    finally:
        await client.aclose()
    return {str(replica): int(n) for replica, n in counts.items()}


async def _until(check: Callable[[], Awaitable[bool]], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "never came true"
        await asyncio.sleep(0.02)


async def test_two_replicas_share_the_owner_cap_and_a_release_frees_a_place_for_the_other(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    _, one = limits_for(valkey, max_subscriptions_per_owner=3)
    _, two = limits_for(valkey, max_subscriptions_per_owner=3)
    await one.start()
    await two.start()
    here, there = Connection(owner), Connection(owner)
    assert [await _admitted(one, here) for _ in range(2)] == [True, True]
    assert [await _admitted(two, there) for _ in range(2)] == [True, False]
    assert not await _admitted(one, here)
    assert await _counts(valkey, owner) == {one.replica: 2, two.replica: 1}
    one.release(here)

    async def freed() -> bool:
        return await _counts(valkey, owner) == {one.replica: 1, two.replica: 1}

    await _until(freed)
    assert await _admitted(two, there)
    await one.close()  # a replica that stops gives its places back at once
    assert await _counts(valkey, owner) == {two.replica: 2}
    assert await _admitted(two, there)
    await two.close()
    assert await _counts(valkey, owner) == {}


async def test_a_burst_of_one_owners_subscriptions_is_admitted_in_a_call_or_two(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    _, limits = limits_for(
        valkey, max_subscriptions_per_connection=100, max_subscriptions_per_owner=40
    )
    await limits.start()
    connection = Connection(owner)
    calls = await _script_calls(valkey)
    admitted = await asyncio.gather(*(_admitted(limits, connection) for _ in range(50)))
    assert await _script_calls(valkey) - calls <= 2
    assert sum(admitted) == 40 == connection.live_subscriptions
    assert await _counts(valkey, owner) == {limits.replica: 40}
    await limits.close()


@pytest.mark.slow  # a process of its own
async def test_a_dead_replicas_places_come_back_once_its_lease_expires(
    valkey: EmbeddedValkey, owner: Principal
) -> None:
    """Another process takes the owner's three places and is killed (SIGKILL: nothing is
    given back); this replica is refused until the dead one's lease lapses."""
    lease = 0.6
    _, limits = limits_for(valkey, max_subscriptions_per_owner=3, subscription_lease_seconds=lease)
    await limits.start()
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, valkey.url, owner.owner, str(lease),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"3"
        connection = Connection(owner)
        assert not await _admitted(limits, connection), "the other process holds every place"
        holder.kill()
        await holder.wait()
        killed = time.monotonic()
        assert not await _admitted(limits, connection), "its places outlive it for a lease"
        await _until(lambda: _admitted(limits, connection), within=lease + 1)
        assert time.monotonic() - killed <= lease + 0.5
        for _ in range(2):
            assert await _admitted(limits, connection)
        assert not await _admitted(limits, connection)
        assert await _counts(valkey, owner) == {limits.replica: 3}
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await limits.close()


# A replica in a process of its own: takes the owner's places, says how many, then waits.
_HOLDER = """
import asyncio, sys
from gql.services.auth import Principal
from gql.services.limits import Limits
from gql.services.store import connect
from tasks.core.settings import Settings

async def main(url, owner, lease):
    settings = Settings(
        env="test", redis_url=url, auth_mode="api_key", api_keys={"0" * 64: owner},
        max_subscriptions_per_owner=3, subscription_lease_seconds=float(lease),
    )
    limits = Limits(settings.limits, connect(url, settings))
    await limits.start()

    class Connection:
        principal = Principal(owner)
        live_subscriptions = 0

    connection = Connection()
    for _ in range(3):
        await limits.admit(connection)
    print(connection.live_subscriptions, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_introspection_can_be_switched_off_for_production() -> None:
    settings = Settings(env="test", introspection=False)
    load_task_modules(settings)
    closed = await build_schema(registry, settings).execute("{ __schema { queryType { name } } }")
    assert closed.errors and "introspection" in closed.errors[0].message
    opened = await build_schema(registry, Settings(env="test")).execute("{ __typename }")
    assert opened.errors is None
