"""Watching jobs: the snapshot first, then every newer change, over every transport."""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Annotated, TypeVar

import strawberry
from redis.exceptions import RedisError

from gql.live.broadcast import RESYNC, EventQueue, Resync
from gql.schema.context import Context, Info
from gql.schema.types import Job, JobFilter, JobId
from gql.services.errors import NotFound
from tasks.core import records, slots
from tasks.core.records import JobSnapshot, every_owner_channel, job_channel, owner_channel
from tasks.core.scripts import PageQuery

# How many jobs a `jobs` stream remembers to drop stale or repeated events; past it the
# oldest are forgotten (an old job's late event is then judged by its own sequence only).
_REMEMBERED = 10_000
# After a gap, a `jobs` stream re-reads this many of the newest jobs created meanwhile.
_RESYNC_PAGE = 200
# A resync follows a reconnect, but the records may still refuse for a moment (a cluster
# node back before its slots are, CLUSTERDOWN; a Redis loading its data, LOADING): the
# re-read waits this long in all (doubling pauses) before the subscriber hears of it.
_REREAD_PAUSES = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)

T = TypeVar("T")


async def _patiently(read: Callable[[], Awaitable[T]]) -> T:
    for pause in _REREAD_PAUSES:
        try:
            return await read()
        except RedisError:
            await asyncio.sleep(pause)
    return await read()


def _matches(snapshot: JobSnapshot, job_filter: JobFilter | None) -> bool:
    if job_filter is None:
        return True
    if job_filter.states and snapshot.state not in job_filter.states:
        return False
    if job_filter.task and snapshot.task != job_filter.task:
        return False
    if job_filter.created_after and snapshot.created_at <= job_filter.created_after:
        return False
    return not (job_filter.created_before and snapshot.created_at >= job_filter.created_before)


def until_expiry(context: Context, events: EventQueue) -> ExpiryWatch:
    """``with until_expiry(context, events)``: wake the stream when the caller's token
    expires; it then ends with UNAUTHENTICATED (each wake-up checks the token first), even
    if no event of its jobs comes. A WebSocket's streams need none: the socket ends them
    all at that moment (gql.http.credentials)."""
    return ExpiryWatch(_expiry_of(context), events)


def _expiry_of(context: Context) -> float | None:
    """When the caller's streams must end on their own (none on a watched socket)."""
    return None if context.credential_watched else context.principal.expires_at


class ExpiryWatch:
    """One stream's place in the alarm of its token's expiry time, for a ``with`` block."""

    __slots__ = ("_alarm", "_events", "_expires_at")

    def __init__(self, expires_at: float | None, events: EventQueue) -> None:
        self._expires_at = expires_at
        self._events = events
        self._alarm: _Alarm | None = None

    def __enter__(self) -> None:
        self._alarm = _alarm_for(self._expires_at, self._events)

    def __exit__(self, *exc_info: object) -> None:
        if self._alarm is not None:
            self._alarm.leave(self._events)
            self._alarm = None


def _alarm_for(expires_at: float | None, events: EventQueue) -> _Alarm | None:
    """Put ``events`` in the alarm of ``expires_at`` (none for a credential that never
    expires); the caller leaves it when its stream ends."""
    if expires_at is None:
        return None
    alarms = _alarms.setdefault(asyncio.get_running_loop(), {})
    alarm = alarms.get(expires_at)
    if alarm is None:
        alarm = alarms[expires_at] = _Alarm(alarms, expires_at)
    alarm.streams.add(events)
    return alarm


class _Alarm:
    """One timer for every stream whose token expires at the same instant.

    A connection's subscriptions share its token, so thousands of them would otherwise hold
    a timer each (in libuv's memory, besides Python's) for one and the same moment.
    """

    __slots__ = ("_alarms", "_handle", "expires_at", "streams")

    def __init__(self, alarms: dict[float, _Alarm], expires_at: float) -> None:
        self._alarms = alarms
        self.expires_at = expires_at
        self.streams: set[EventQueue] = set()
        delay = max(0.0, expires_at - time.time())
        self._handle = asyncio.get_running_loop().call_later(delay, self._ring)

    def _ring(self) -> None:
        # The loop's clock and the wall clock may differ by a little: wake only when expired.
        if time.time() < self.expires_at:
            delay = max(0.01, self.expires_at - time.time())
            self._handle = asyncio.get_running_loop().call_later(delay, self._ring)
            return
        # Streams joining from now on get an alarm of their own, which rings at once.
        self._forget()
        for events in self.streams:
            events.put(RESYNC)

    def leave(self, events: EventQueue) -> None:
        self.streams.discard(events)
        if not self.streams:
            self._handle.cancel()
            self._forget()

    def _forget(self) -> None:
        if self._alarms.get(self.expires_at) is self:
            del self._alarms[self.expires_at]


# Per event loop (a test suite runs many): the alarms by expiry time.
_alarms: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, _Alarm]] = (
    weakref.WeakKeyDictionary()
)


class _Watch:
    """What a ``job(id)`` stream holds for its life, taken in order and given back in
    reverse: its place in the subscription limits, its channel's queue, its token's alarm.

    One object rather than three ``with`` blocks: thousands of streams wait at once, and
    each block keeps its context manager and exit method on the stream's frame.
    """

    __slots__ = ("_alarm", "_channel", "_context", "events")

    def __init__(self, context: Context, channel: str) -> None:
        self._context = context
        self._channel = channel
        self._alarm: _Alarm | None = None

    async def __aenter__(self) -> EventQueue:
        context = self._context
        await context.limits.admit(context)
        try:
            self.events = await context.broadcast.join(self._channel)
        except BaseException:
            context.limits.release(context)
            raise
        self._alarm = _alarm_for(_expiry_of(context), self.events)
        return self.events

    async def __aexit__(self, *exc_info: object) -> None:
        context = self._context
        try:
            if self._alarm is not None:
                self._alarm.leave(self.events)
            await context.broadcast.leave(self._channel, self.events)
        finally:
            context.limits.release(context)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The job now, then every change of it; completes after its final state."
    )
    async def job(self, info: Info, id: JobId) -> AsyncGenerator[Job, None]:
        context = info.context
        jobs, owner, principal, job_id = context.jobs, context.scope, context.principal, str(id)
        del info  # the resolve info and all it refers to, not held for the stream's life
        # Subscribe first, then read: an event published in between is newer than the
        # snapshot and arrives through the subscription, so no transition falls in a gap.
        # One generator, no inner ones: thousands of these wait at once, each frame counts.
        async with _Watch(context, job_channel(job_id)) as events:
            snapshot = await jobs.get(job_id, owner)
            if snapshot is None:
                raise NotFound(f"no job {id!r}")
            # Only what the wait needs, not the snapshot (its own ~200 bytes, for life).
            sequence, done = snapshot.sequence, snapshot.done
            yield Job.from_snapshot(snapshot)
            del snapshot
            while not done:
                item = await events.get()
                principal.check()
                if isinstance(item, Resync):
                    reread = await _patiently(functools.partial(jobs.get, job_id, owner))
                    if reread is None:
                        raise NotFound(f"job {id!r} expired")
                    item = reread
                if item.sequence > sequence:
                    sequence, done = item.sequence, item.done
                    yield Job.from_snapshot(item)

    @strawberry.subscription(
        description="Every change of every job you may see (an admin: every owner's), "
        "filtered on the server."
    )
    async def jobs(
        self,
        info: Info,
        filter: Annotated[
            JobFilter | None, strawberry.argument(description="Only the jobs that match.")
        ] = None,
    ) -> AsyncGenerator[Job, None]:
        context = info.context
        async with context.limits.subscription(context):
            scope = context.scope
            channels = [
                owner_channel(scope, tag) if scope is not None else every_owner_channel(tag)
                for tag in slots.tags()
            ]
            events_of = context.broadcast.subscribe(*channels)
            async with events_of as events:
                with until_expiry(context, events):
                    async for job in _firehose(context, events, filter):
                        yield job


async def _firehose(
    context: Context, events: EventQueue, filter: JobFilter | None
) -> AsyncGenerator[Job, None]:
    """Every change of the caller's own jobs, or of every owner's for an admin (each job
    names its owner)."""
    service, scope, principal = context.jobs, context.scope, context.principal
    owner = context.owner if scope is None else scope
    sent: OrderedDict[str, int] = OrderedDict()
    since = records.now() - timedelta(seconds=1)
    while True:
        item = await events.get()
        principal.check()
        changed: Iterable[JobSnapshot]
        if isinstance(item, Resync):
            query = PageQuery(owner=owner, limit=_RESYNC_PAGE, created_after=since)
            page = functools.partial(service.page, query, every_owner=scope is None)
            newest = await _patiently(page)
            known = await _patiently(lambda: service.get_many(list(sent), scope))
            changed = sorted([*newest, *known], key=lambda s: s.created_at)
        else:
            changed = (item,)
        for snapshot in changed:
            if (scope is not None and snapshot.owner != scope) or not _matches(snapshot, filter):
                continue
            if sent.get(snapshot.id, -1) >= snapshot.sequence:
                continue
            sent[snapshot.id] = snapshot.sequence
            sent.move_to_end(snapshot.id)
            if len(sent) > _REMEMBERED:
                sent.popitem(last=False)
            yield Job.from_snapshot(snapshot)
