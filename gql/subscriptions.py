"""Watching jobs: the snapshot first, then every newer change, over every transport."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterable
from datetime import timedelta

import strawberry

from gql.broadcast import Resync
from gql.context import Info
from gql.errors import NotFound
from gql.types import Job, JobFilter
from tasks import records
from tasks.records import JobSnapshot, job_channel, owner_channel
from tasks.scripts import PageQuery

# How many jobs a `jobs` stream remembers to drop stale or repeated events; past it the
# oldest are forgotten (an old job's late event is then judged by its own sequence only).
_REMEMBERED = 10_000
# After a gap, a `jobs` stream re-reads this many of the newest jobs created meanwhile.
_RESYNC_PAGE = 200


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


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="The job now, then every change of it; completes after its final state."
    )
    async def job(self, info: Info, id: strawberry.ID) -> AsyncGenerator[Job, None]:
        jobs, owner = info.context.jobs, info.context.owner
        # Subscribe first, then read: an event published in between is newer than the
        # snapshot and arrives through the subscription, so no transition falls in a gap.
        async with info.context.broadcast.subscribe(job_channel(str(id))) as events:
            snapshot = await jobs.get(str(id), owner)
            if snapshot is None:
                raise NotFound(f"no job {id!r}")
            yield Job.from_snapshot(snapshot)
            last = snapshot
            while not last.done:
                item = await events.get()
                if isinstance(item, Resync):
                    reread = await jobs.get(str(id), owner)
                    if reread is None:
                        raise NotFound(f"job {id!r} expired")
                    item = reread
                if item.sequence > last.sequence:
                    last = item
                    yield Job.from_snapshot(item)

    @strawberry.subscription(
        description="Every change of every job you may see, filtered on the server."
    )
    async def jobs(self, info: Info, filter: JobFilter | None = None) -> AsyncGenerator[Job, None]:
        service, owner = info.context.jobs, info.context.owner
        sent: OrderedDict[str, int] = OrderedDict()
        async with info.context.broadcast.subscribe(owner_channel(owner)) as events:
            since = records.now() - timedelta(seconds=1)
            while True:
                item = await events.get()
                changed: Iterable[JobSnapshot]
                if isinstance(item, Resync):
                    newest = await service.page(
                        PageQuery(owner=owner, limit=_RESYNC_PAGE, created_after=since)
                    )
                    known = await service.get_many(list(sent), owner)
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
