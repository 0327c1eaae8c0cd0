"""Abuse limits kept while a request runs: mutations per owner, live subscriptions.

The mutation rate lives in Redis (one script call per mutation), so it holds across every
API replica; the subscription caps count what this process serves.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

import redis.asyncio as aioredis

from gql.auth import Principal
from gql.errors import RateLimited
from tasks import scripts
from tasks.settings import Settings


class Subscriber(Protocol):
    """What a subscription is counted by: its caller and its connection's own count."""

    principal: Principal
    live_subscriptions: int


class Limits:
    def __init__(self, settings: Settings, client: aioredis.Redis) -> None:
        # In `none` mode every caller is the same owner: one shared budget would throttle
        # development and tests for nothing, so the per-owner limits apply to authenticated
        # owners; the per-connection cap applies to everyone.
        authenticated = bool(settings.auth_methods)
        self._limit = settings.rate_limit_mutations if authenticated else 0
        self._window = settings.rate_limit_window_seconds
        self._rate = client.register_script(scripts.RATE_SCRIPT)
        self._per_connection = settings.max_subscriptions_per_connection
        self._per_owner = settings.max_subscriptions_per_owner if authenticated else 0
        self._live: Counter[str] = Counter()

    async def mutation(self, principal: Principal) -> None:
        """Admit one mutation of ``principal`` or raise ``RATE_LIMITED`` with a retry hint."""
        if not self._limit:
            return
        call = scripts.rate_call(principal.owner, self._limit, self._window)
        wait = int(await self._rate(keys=call.keys, args=call.args))
        if wait:
            raise RateLimited(
                f"more than {self._limit} mutations in {self._window:g} s; slow down",
                retry_after=wait / 1_000_000,
            )

    def subscription(self, subscriber: Subscriber) -> Admission:
        """``with limits.subscription(subscriber)``: one live subscription of the caller for
        as long as the block runs, or ``RATE_LIMITED`` on entry."""
        return Admission(self, subscriber)

    def admit(self, subscriber: Subscriber) -> None:
        """Count one live subscription of the caller, or raise ``RATE_LIMITED``."""
        owner = subscriber.principal.owner
        if subscriber.live_subscriptions >= self._per_connection:
            raise RateLimited(
                f"at most {self._per_connection} subscriptions per connection", retry_after=1
            )
        if self._per_owner and self._live[owner] >= self._per_owner:
            raise RateLimited(f"at most {self._per_owner} live subscriptions", retry_after=1)
        subscriber.live_subscriptions += 1
        self._live[owner] += 1

    def release(self, subscriber: Subscriber) -> None:
        """Uncount one admitted subscription."""
        owner = subscriber.principal.owner
        subscriber.live_subscriptions -= 1
        self._live[owner] -= 1
        if not self._live[owner]:
            del self._live[owner]

    def stats(self) -> dict[str, int]:
        return {"subscribing_owners": len(self._live)}


class Admission:
    """One admitted subscription, held by its stream for its whole life: a small object, not
    a generator-based context manager (whose suspended frame costs several times more)."""

    __slots__ = ("_limits", "_subscriber")

    def __init__(self, limits: Limits, subscriber: Subscriber) -> None:
        self._limits = limits
        self._subscriber = subscriber

    def __enter__(self) -> None:
        self._limits.admit(self._subscriber)

    def __exit__(self, *exc_info: object) -> None:
        self._limits.release(self._subscriber)
