"""Abuse limits kept while a request runs: mutations per owner, and live subscriptions. The
mutation rate lives in Redis, so it holds across every API replica, yet a busy owner's mutations
are not each a round trip: a replica leases a few of the owner's budget per script call (at most
``rate_limit_lease``, at most a hundredth of the limit) and spends them locally, so the only
slack is one unspent lease per owner and replica. Live subscriptions are capped per connection
(counted here) and per owner across every replica: each replica states its count of an owner's
subscriptions in Redis, one call in flight per owner, and keeps it alive with a lease of its own,
so the count of a replica that died is dropped within ``subscription_lease_seconds``. The
per-owner limits apply only when authentication is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gql.services.auth import Principal
from gql.services.errors import RateLimited
from tasks.core import scripts
from tasks.core.settings import LimitSettings

logger = logging.getLogger(__name__)

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
        # Each owner's live subscriptions here; with a per-owner cap, every replica's count
        # is in Redis too, kept alive by this replica's lease (see :meth:`start`).
        self._owners: dict[str, _OwnerCount] = {}
        self._client = client
        self._count = client.register_script(scripts.SUBSCRIPTIONS_SCRIPT)
        self._lease_seconds = settings.subscription_lease_seconds
        self.replica = uuid.uuid4().hex
        self._lease_key = scripts.SUBSCRIPTION_LEASE_PREFIX + self.replica
        self._renewing: asyncio.Task[None] | None = None
        self._syncing: set[asyncio.Task[None]] = set()
        self._shared = True  # False while Redis does not answer

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
        """``async with limits.subscription(subscriber)``: one live subscription of the caller
        for as long as the block runs, or ``RATE_LIMITED`` on entry."""
        return Admission(self, subscriber)

    async def admit(self, subscriber: Subscriber) -> None:
        """Count one live subscription of the caller, or raise ``RATE_LIMITED``."""
        if subscriber.live_subscriptions >= self._per_connection:
            raise RateLimited(
                f"at most {self._per_connection} subscriptions per connection", retry_after=1
            )
        # Counted at once: another subscribe on this connection must see it while we wait.
        subscriber.live_subscriptions += 1
        try:
            await self._admit(subscriber.principal.owner)
        except BaseException:
            subscriber.live_subscriptions -= 1
            raise

    def release(self, subscriber: Subscriber) -> None:
        """Uncount one admitted subscription (Redis learns it in the background)."""
        subscriber.live_subscriptions -= 1
        self._release(subscriber.principal.owner)

    async def _admit(self, owner: str) -> None:
        count = self._owners.get(owner)
        if count is None:
            count = self._owners[owner] = _OwnerCount()
        if not self._per_owner:
            count.live += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        count.waiting.append(waiter)
        self._sync_soon(owner, count)
        try:
            admitted = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._release(owner)  # counted just as its stream went away
            raise
        if not admitted:
            raise RateLimited(f"at most {self._per_owner} live subscriptions", retry_after=1)

    def _release(self, owner: str) -> None:
        count = self._owners.get(owner)
        if count is None:
            return
        count.live -= 1
        if self._per_owner:
            self._sync_soon(owner, count)
        elif not count.live:
            del self._owners[owner]

    def _sync_soon(self, owner: str, count: _OwnerCount) -> None:
        """State this replica's count of ``owner`` in Redis (asking for the waiting ones) in
        a task of the owner's own, unless one runs: it sees the change when its call returns."""
        if count.busy:
            return
        count.busy = True
        task = asyncio.ensure_future(self._sync(owner, count))
        self._syncing.add(task)
        task.add_done_callback(self._syncing.discard)

    async def _sync(self, owner: str, count: _OwnerCount) -> None:
        """One call in flight per owner: the admissions that wait meanwhile go in the next
        one, so a burst of an owner's subscriptions costs a round trip or two, and no call
        overtakes an older one of the same owner (each states the replica's whole count)."""
        try:
            while count.waiting or count.stored != count.live:
                waiting, count.waiting = count.waiting, []
                granted = await self._counted(owner, count, count.live + len(waiting))
                fresh = granted - count.live
                for waiter in waiting:
                    if waiter.done():  # its stream went away while it waited: not counted
                        continue
                    waiter.set_result(fresh > 0)
                    if fresh > 0:
                        count.live += 1
                        fresh -= 1
        finally:
            count.busy = False
            for waiter in count.waiting:
                waiter.cancel()  # only when this task is cancelled: the API is stopping
            count.waiting.clear()
            if (
                not (count.live or count.waiting or count.stored)
                and self._owners.get(owner) is count
            ):
                del self._owners[owner]

    async def _counted(self, owner: str, count: _OwnerCount, wanted: int) -> int:
        """How many of ``wanted`` subscriptions of ``owner`` this replica may count."""
        if self._shared:
            call = scripts.subscriptions_call(
                owner, self.replica, count.live, wanted, self._per_owner
            )
            try:
                count.stored = int(await self._count(keys=call.keys, args=call.args))
                return count.stored
            except (RedisError, OSError) as exc:
                self._unshared(exc)
        # Until Redis answers again (the lease renewal finds out, and then states every
        # count anew), each replica holds the cap on its own.
        count.stored = max(count.live, min(wanted, self._per_owner))
        return count.stored

    async def start(self) -> None:
        """Hold this replica's lease in Redis (with a per-owner cap): while it lives, the
        other replicas count this one's subscriptions."""
        if self._per_owner:
            await self._renew()  # before any count: one without a lease is dropped
            self._renewing = asyncio.create_task(self._renew_forever(), name="jobql-lease")

    async def close(self) -> None:
        """Give this replica's counts back at once, rather than when its lease expires."""
        tasks = [t for t in (self._renewing, *self._syncing) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if not self._per_owner:
            return
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0), self._client.pipeline(transaction=False) as pipe:
                pipe.delete(self._lease_key)
                for owner in self._owners:
                    pipe.hdel(scripts.subscriptions_key(owner), self.replica)
                await pipe.execute()

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            await self._renew()

    async def _renew(self) -> None:
        """Renew the lease; where a count may be wrong in Redis, state it again."""
        lease = max(1, int(self._lease_seconds * 1000))
        try:
            if not await self._client.set(self._lease_key, "1", px=lease, xx=True):
                # Lapsed (this replica's start, a Redis that lost it, a stall longer than the
                # lease): the other replicas may have dropped its counts.
                await self._client.set(self._lease_key, "1", px=lease)
                for count in self._owners.values():
                    count.stored = _UNKNOWN
        except (RedisError, OSError) as exc:
            self._unshared(exc)
            return
        if not self._shared:
            self._shared = True
            logger.info("subscription counts shared through Redis again")
            for count in self._owners.values():
                count.stored = _UNKNOWN
        for owner, count in list(self._owners.items()):
            if count.stored != count.live:
                self._sync_soon(owner, count)

    def _unshared(self, exc: Exception) -> None:
        if self._shared:
            self._shared = False
            logger.warning(
                "subscription counts not shared (%s): each replica holds the cap alone", exc
            )

    def stats(self) -> dict[str, int]:
        return {"subscribing_owners": sum(1 for count in self._owners.values() if count.live)}


# A count Redis may not hold as this replica knows it (a call failed, the lease lapsed).
_UNKNOWN = -1


class _OwnerCount:
    """One owner's live subscriptions on this replica, what Redis holds of them, and the
    admissions waiting for the owner's call in flight (``busy``)."""

    __slots__ = ("busy", "live", "stored", "waiting")

    def __init__(self) -> None:
        self.live = 0
        self.stored = 0
        self.waiting: list[asyncio.Future[bool]] = []
        self.busy = False


class Admission:
    """One admitted subscription, held by its stream for its whole life: a small object, not
    a generator-based context manager (whose suspended frame costs several times more)."""

    __slots__ = ("_limits", "_subscriber")

    def __init__(self, limits: Limits, subscriber: Subscriber) -> None:
        self._limits = limits
        self._subscriber = subscriber

    async def __aenter__(self) -> None:
        await self._limits.admit(self._subscriber)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limits.release(self._subscriber)
