"""Abuse limits kept while a request runs: mutations per owner, and live subscriptions. The
mutation rate lives in Redis, so it holds across every API replica, yet a busy owner's mutations
are not each a round trip: a replica leases a few of the owner's budget per script call (at most
``rate_limit_lease``, at most a hundredth of the limit) and spends them locally, so the only
slack is one unspent lease per owner and replica. The subscription caps count what this process
serves; the per-owner limits apply only when authentication is on.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Protocol

import redis.asyncio as aioredis

from gql.services.auth import Principal
from gql.services.errors import RateLimited
from tasks.core import scripts
from tasks.core.settings import LimitSettings

# Owners with leased mutations kept at once (each is one small dict entry).
_HELD_OWNERS = 10_000


class Subscriber(Protocol):
    """What a subscription is counted by: its caller and its connection's own count."""

    principal: Principal
    live_subscriptions: int


class Limits:
    def __init__(self, settings: LimitSettings, client: aioredis.Redis) -> None:
        # In `none` mode every caller is the same owner: one shared budget would throttle
        # development and tests for nothing, so the per-owner limits apply to authenticated
        # owners; the per-connection cap applies to everyone.
        authenticated = settings.authenticated
        self._limit = settings.rate_limit_mutations if authenticated else 0
        self._window = settings.rate_limit_window_seconds
        self._rate = client.register_script(scripts.RATE_SCRIPT)
        # Under 200 mutations a window every mutation asks Redis: the limit stays exact.
        self._lease = max(1, min(settings.rate_limit_lease, self._limit // 100))
        self._held: dict[str, int] = {}  # owner -> mutations leased and not yet spent
        self._leasing: dict[str, asyncio.Future[int]] = {}
        self._per_connection = settings.max_subscriptions_per_connection
        self._per_owner = settings.max_subscriptions_per_owner if authenticated else 0
        self._live: Counter[str] = Counter()

    async def mutation(self, principal: Principal) -> None:
        """Admit one mutation of ``principal`` or raise ``RATE_LIMITED`` with a retry hint."""
        if not self._limit:
            return
        owner = principal.owner
        if self._lease == 1:
            _, wait = await self._ask(owner, 1)
            self._refuse(wait)
            return
        while True:
            held = self._held.get(owner, 0)
            if held:
                if held == 1:
                    del self._held[owner]
                else:
                    self._held[owner] = held - 1
                return
            # One lease in flight per owner: concurrent mutations share its grant, and
            # those it could not cover ask again.
            leasing = self._leasing.get(owner)
            if leasing is None:
                leasing = asyncio.ensure_future(self._take(owner))
                self._leasing[owner] = leasing
            self._refuse(await asyncio.shield(leasing))

    async def _ask(self, owner: str, wanted: int) -> tuple[int, int]:
        """Up to ``wanted`` mutations of ``owner`` admitted by Redis, or none and the µs to wait."""
        call = scripts.rate_call(owner, self._limit, self._window, wanted)
        admitted, wait = await self._rate(keys=call.keys, args=call.args)
        return int(admitted), int(wait)

    async def _take(self, owner: str) -> int:
        """Lease mutations of ``owner`` into ``_held``; 0, or the µs to wait."""
        try:
            admitted, wait = await self._ask(owner, self._lease)
        finally:
            del self._leasing[owner]
        if admitted:
            if len(self._held) >= _HELD_OWNERS:
                self._held.clear()  # what was held is lost: fewer admitted, never more
            self._held[owner] = self._held.get(owner, 0) + admitted
        return wait

    def _refuse(self, wait: int) -> None:
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
