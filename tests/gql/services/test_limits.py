"""The per-owner limits on a real Valkey and in process: the rate script's arithmetic and
the subscription counts (the end-to-end story is in test_security.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from devtools.valkey import EmbeddedValkey
from gql.app import load_task_modules
from gql.schema.root import build_schema
from gql.services.auth import Principal
from gql.services.errors import RateLimited
from gql.services.limits import Limits
from gql.services.store import connect
from tasks.core.app import registry
from tasks.core.settings import Settings


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
    with limits.subscription(Connection(anonymous)), limits.subscription(Connection(anonymous)):
        pass


def test_subscriptions_are_counted_per_connection_and_per_owner(valkey: EmbeddedValkey) -> None:
    _, limits = limits_for(
        valkey, max_subscriptions_per_connection=2, max_subscriptions_per_owner=3
    )
    alice = Principal("alice")
    one, two = Connection(alice), Connection(alice)
    with limits.subscription(one), limits.subscription(one):
        with pytest.raises(RateLimited, match="per connection"), limits.subscription(one):
            pass
        with limits.subscription(two):
            with pytest.raises(RateLimited, match="live subscriptions"), limits.subscription(two):
                pass
            with limits.subscription(Connection(Principal("bob"))):
                pass
    assert (one.live_subscriptions, two.live_subscriptions) == (0, 0)
    assert limits.stats() == {"subscribing_owners": 0}


async def test_introspection_can_be_switched_off_for_production() -> None:
    settings = Settings(env="test", introspection=False)
    load_task_modules(settings)
    closed = await build_schema(registry, settings).execute("{ __schema { queryType { name } } }")
    assert closed.errors and "introspection" in closed.errors[0].message
    opened = await build_schema(registry, Settings(env="test")).execute("{ __typename }")
    assert opened.errors is None
