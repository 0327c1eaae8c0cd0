"""Watching jobs: the snapshot first, then every newer change, over every transport."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from datetime import timedelta
from typing import Annotated, TypeVar

import strawberry
from redis.exceptions import RedisError

from gql.auth import Principal
from gql.broadcast import RESYNC, EventQueue, Resync
from gql.context import Context, Info
from gql.errors import NotFound
from gql.jobs import JobService
from gql.types import Job, JobFilter, JobId
from tasks import records, slots
from tasks.records import JobSnapshot, job_channel, owner_channel
from tasks.scripts import PageQuery

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


@contextlib.contextmanager
def until_expiry(principal: Principal, events: EventQueue) -> Iterator[None]:
    """Wake the stream when the caller's token expires: it then ends with UNAUTHENTICATED
    (each wake-up checks the token first), even if no event of its jobs comes."""
    expires_at = principal.expires_at
    if expires_at is None:
        yield
        return
    loop = asyncio.get_running_loop()
    alarm: asyncio.TimerHandle | None = None

    def ring() -> None:
        nonlocal alarm
        # The loop's clock and the wall clock may differ by a little: wake only when expired.
        if principal.expired():
            events.put(RESYNC)
        else:
            alarm = loop.call_later(max(0.01, expires_at - time.time()), ring)

    alarm = loop.call_later(max(0.0, expires_at - time.time()), ring)
    try:
        yield
    finally:
        alarm.cancel()


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The job now, then every change of it; completes after its final state."
    )
    async def job(self, info: Info, id: JobId) -> AsyncGenerator[Job, None]:
        context = info.context
        jobs, owner, principal = context.jobs, context.scope, context.principal
        # Subscribe first, then read: an event published in between is newer than the
        # snapshot and arrives through the subscription, so no transition falls in a gap.
        with context.limits.subscription(context):
            async with context.broadcast.subscribe(job_channel(str(id))) as events:
                snapshot = await jobs.get(str(id), owner)
                if snapshot is None:
                    raise NotFound(f"no job {id!r}")
                yield Job.from_snapshot(snapshot)
                with until_expiry(principal, events):
                    async for job in _changes(jobs, str(id), owner, principal, events, snapshot):
                        yield job

    @strawberry.subscription(
        description="Every change of every job you may see, filtered on the server."
    )
    async def jobs(
        self,
        info: Info,
        filter: Annotated[
            JobFilter | None, strawberry.argument(description="Only the jobs that match.")
        ] = None,
    ) -> AsyncGenerator[Job, None]:
        context = info.context
        with context.limits.subscription(context):
            owner = context.owner
            channels = [owner_channel(owner, tag) for tag in slots.tags()]
            events_of = context.broadcast.subscribe(*channels)
            async with events_of as events, _expiring(context.principal, events):
                async for job in _firehose(context, events, filter):
                    yield job


@contextlib.asynccontextmanager
async def _expiring(principal: Principal, events: EventQueue) -> AsyncGenerator[None, None]:
    with until_expiry(principal, events):
        yield


async def _changes(
    jobs: JobService,
    job_id: str,
    owner: str | None,
    principal: Principal,
    events: EventQueue,
    last: JobSnapshot,
) -> AsyncGenerator[Job, None]:
    """Every change of one job newer than ``last``, until its final state."""
    id = job_id
    while not last.done:
        item = await events.get()
        principal.check()
        if isinstance(item, Resync):
            reread = await _patiently(lambda: jobs.get(id, owner))
            if reread is None:
                raise NotFound(f"job {id!r} expired")
            item = reread
        if item.sequence > last.sequence:
            last = item
            yield Job.from_snapshot(item)


async def _firehose(
    context: Context, events: EventQueue, filter: JobFilter | None
) -> AsyncGenerator[Job, None]:
    """Every change of the caller's own jobs (an admin's too: the stream is per owner)."""
    service, owner, principal = context.jobs, context.owner, context.principal
    sent: OrderedDict[str, int] = OrderedDict()
    since = records.now() - timedelta(seconds=1)
    while True:
        item = await events.get()
        principal.check()
        changed: Iterable[JobSnapshot]
        if isinstance(item, Resync):
            query = PageQuery(owner=owner, limit=_RESYNC_PAGE, created_after=since)
            newest = await _patiently(functools.partial(service.page, query))
            known = await _patiently(lambda: service.get_many(list(sent), owner))
            changed = sorted([*newest, *known], key=lambda s: s.created_at)
        else:
            changed = (item,)
        for snapshot in changed:
            if snapshot.owner != owner or not _matches(snapshot, filter):
                continue
            if sent.get(snapshot.id, -1) >= snapshot.sequence:
                continue
            sent[snapshot.id] = snapshot.sequence
            sent.move_to_end(snapshot.id)
            if len(sent) > _REMEMBERED:
                sent.popitem(last=False)
            yield Job.from_snapshot(snapshot)
