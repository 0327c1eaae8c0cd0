"""Where schedules are kept: :class:`ScheduleStore`, all the schedule service needs, and
:class:`RedisScheduleStore`, its implementation on RedBeat's entries. An interface so that a
deployment whose beat reads schedules elsewhere (django-celery-beat's models,
:mod:`gql.django.schedule_store`) plugs in its own; a store knows nothing of owners' permissions
(the service checks them) but keeps names unique per owner, since only it can do so atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from tasks.core import records
from tasks.core.schedules import FIELDS, SCHEDULE_SET, ScheduleRecord, entry_key, names_key

Change = Callable[[ScheduleRecord], ScheduleRecord]


class NameTaken(Exception):
    """The owner already has a schedule of that name."""


class TooManySchedules(Exception):
    """The owner has as many schedules as allowed."""


class ScheduleStore(Protocol):
    async def list(self, owner: str | None) -> list[ScheduleRecord]:
        """An owner's schedules, or everyone's for None, by name."""

    async def get(self, schedule_id: str) -> ScheduleRecord | None: ...

    async def create(self, record: ScheduleRecord, *, limit: int) -> None:
        """Store a new schedule; raises :class:`NameTaken` or :class:`TooManySchedules`."""

    async def update(self, schedule_id: str, change: Change) -> ScheduleRecord | None:
        """Apply ``change`` to the schedule as stored now, atomically with respect to beat
        recording a run; None when it is gone. Raises :class:`NameTaken` on a rename to a
        name the owner already uses."""

    async def delete(self, schedule_id: str) -> bool:
        """Remove it; False when it was already gone."""


_ATTEMPTS = 5  # optimistic transactions retried when beat wrote the same entry meanwhile


class RedisScheduleStore:
    """RedBeat's entries (see :mod:`tasks.core.schedules`), read and written on the API's async
    client in WATCH/MULTI transactions: a run recorded by beat meanwhile is never lost."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client

    async def list(self, owner: str | None) -> list[ScheduleRecord]:
        if owner is None:
            keys = [str(k) for k in await self.client.zrange(SCHEDULE_SET, 0, -1)]
        else:
            ids = await self.client.hvals(names_key(owner))
            keys = [entry_key(str(i)) for i in ids]
        async with self.client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, FIELDS)
            rows = await pipe.execute()
        found = [ScheduleRecord.decode(row) for row in rows]
        return sorted((r for r in found if r is not None), key=lambda r: (r.name, r.owner, r.id))

    async def get(self, schedule_id: str) -> ScheduleRecord | None:
        row = await self.client.hmget(entry_key(schedule_id), FIELDS)
        return ScheduleRecord.decode(row)

    async def create(self, record: ScheduleRecord, *, limit: int) -> None:
        names = names_key(record.owner)
        for _ in range(_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(names)
                    if await pipe.hexists(names, record.name):
                        raise NameTaken(record.name)
                    if await pipe.hlen(names) >= limit:
                        raise TooManySchedules(record.owner)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._write(pipe, record, meta=True)
                    pipe.hset(names, record.name, record.id)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise RuntimeError(f"schedule {record.id} could not be stored: too much contention")

    async def update(self, schedule_id: str, change: Change) -> ScheduleRecord | None:
        key = entry_key(schedule_id)
        for _ in range(_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = ScheduleRecord.decode(await pipe.hmget(key, FIELDS))
                    if current is None:
                        return None
                    changed = change(current)
                    names = names_key(current.owner)
                    renamed = changed.name != current.name
                    if renamed:
                        await pipe.watch(names)
                        if await pipe.hexists(names, changed.name):
                            raise NameTaken(changed.name)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._write(pipe, changed, meta=changed.since != current.since)
                    if renamed:
                        pipe.hdel(names, current.name)
                        pipe.hset(names, changed.name, changed.id)
                    await pipe.execute()
                    return changed
                except WatchError:
                    continue
        raise RuntimeError(f"schedule {schedule_id} could not be changed: too much contention")

    async def delete(self, schedule_id: str) -> bool:
        key = entry_key(schedule_id)
        for _ in range(_ATTEMPTS):
            async with self.client.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    current = ScheduleRecord.decode(await pipe.hmget(key, FIELDS))
                    if current is None:
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key)
                    pipe.zrem(SCHEDULE_SET, key)
                    pipe.hdel(names_key(current.owner), current.name)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue
        raise RuntimeError(f"schedule {schedule_id} could not be deleted: too much contention")

    @staticmethod
    def _write(pipe: aioredis.client.Pipeline, record: ScheduleRecord, *, meta: bool) -> None:
        """The entry as RedBeat reads it; ``meta`` (beat's record of runs) only when the
        schedule is new or re-timed, so a run beat records is never overwritten."""
        key = entry_key(record.id)
        pipe.hset(key, "definition", record.definition())
        if meta:
            pipe.hset(key, "meta", record.meta())
        pipe.zadd(SCHEDULE_SET, {key: record.score(records.now())})
