"""Job records read and written with redis-py's asyncio client: the loop never waits on I/O.

The scripts' KEYS and ARGV come from the builders in :mod:`tasks.scripts`, shared with the worker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from strawberry.dataloader import DataLoader

from gql import compat, packing
from tasks import records, redis_clients, scripts, slots
from tasks.records import JobSnapshot, JobState
from tasks.scripts import Hooks, PageQuery
from tasks.settings import Settings

logger = logging.getLogger(__name__)


def connect(url: str, settings: Settings) -> aioredis.Redis:
    """A client that fails fast: a Redis that is down must be reported, not waited for.

    Its pool is bounded and makes a burst wait for a free connection (redis-py's default
    async pool refuses the 101st concurrent command with MaxConnectionsError instead), and
    packs commands in C (:mod:`gql.packing`).
    """
    client = redis_clients.async_client(
        url,
        settings,
        max_connections=settings.redis_max_connections,
        # Waiting for a free connection is queueing, not a failure; a Redis that is down
        # still fails at once, since connecting is refused or times out on its own.
        wait_for_connection=settings.socket_timeout * 4,
        health_check_interval=30,
        # One immediate retry heals a pooled connection that a Redis restart (or a Sentinel
        # failover) closed; more (redis-py's default backs off for seconds) would turn
        # "down" into a hang.
        retry=Retry(NoBackoff(), retries=1),
    )
    if compat.HIREDIS_PACKING.active:
        packing.install(client.connection_pool)
    return client


def connect_records(settings: Settings) -> aioredis.Redis:
    """The client of the job records: a cluster's, or :func:`connect`'s."""
    if settings.records_cluster:
        cluster = redis_clients.async_cluster(
            settings.records,
            settings,
            max_connections=settings.redis_max_connections,
            retry=Retry(NoBackoff(), retries=1),
        )
        return cluster  # type: ignore[return-value]
    return connect(settings.records, settings)


class JobStore:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        # A cluster runs a script on one slot's node: a batch over several tags is split.
        self._cluster = isinstance(client, aioredis.RedisCluster)
        self._ttl = settings.job_retention_seconds
        self._create = client.register_script(scripts.CREATE_SCRIPT)
        self._create_many = client.register_script(scripts.CREATE_MANY_SCRIPT)
        self._update = client.register_script(scripts.UPDATE_SCRIPT)
        self._page = client.register_script(scripts.PAGE_SCRIPT)
        self._sweep = client.register_script(scripts.SWEEP_SCRIPT)
        # Reads issued in the same loop tick (a burst of queries or of new subscriptions)
        # share one pipeline: one round trip, one pooled connection. No caching.
        self._snapshots = DataLoader(self._load_snapshots, max_batch_size=500, cache=False)

    async def create_many(
        self, batch: list[tuple[dict[str, str], str | None, tuple[str, str] | None]]
    ) -> list[str | None]:
        """Write new PENDING records, all in one atomic call: one round trip per batch.

        Each item is ``(fields, idempotency key, message)``; with a message (queue key,
        Celery message) it is pushed and the job announced in the same call: the broker is
        this Redis. Returns, per item, None when created or the id of the job its
        idempotency key already points to.
        """
        calls = [
            scripts.create_call(fields, ttl=self._ttl, idempotency=key, message=message)
            for fields, key, message in batch
        ]
        groups: dict[str, list[int]] = {}
        for index, (fields, _, _) in enumerate(batch):
            tag = slots.tag_of(fields["id"]) if self._cluster else ""
            groups.setdefault(tag, []).append(index)
        replies: list[object] = [None] * len(calls)
        written: list[int] = []
        try:
            for indexes in groups.values():
                for index, reply in zip(
                    indexes, await self._create_group([calls[i] for i in indexes]), strict=True
                ):
                    replies[index] = reply
                written += indexes
        except BaseException:
            # Only a cluster batch whose idempotency keys fall on several tags gets here
            # with groups already written (never with a message pushed: a cluster is never
            # the broker): take them back, the batch is all or none.
            for index in written:
                if not replies[index]:
                    await self.discard(JobSnapshot.from_hash(batch[index][0]))
            raise
        return [str(reply) if reply else None for reply in replies]

    async def _create_group(self, calls: list[scripts.ScriptCall]) -> list[object]:
        if len(calls) == 1:
            return [await self._create(keys=calls[0].keys, args=calls[0].args)]
        call = scripts.batch_call(calls)
        return list(await self._create_many(keys=call.keys, args=call.args))

    async def announce(self, fields: dict[str, str]) -> None:
        """Publish a new job's PENDING snapshot, once its message is on its way."""
        payload = records.dumps(fields)
        job_id, owner = fields["id"], fields["owner"]
        channels = (records.job_channel(job_id), records.owner_channel(owner, slots.tag_of(job_id)))
        if self._cluster:
            for channel in channels:
                await self.client.spublish(channel, payload)
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.publish(channel, payload)
            await pipe.execute()

    async def discard(self, snapshot: JobSnapshot) -> None:
        """Undo :meth:`create` when the message could not be published: no half-written job."""
        tag = slots.tag_of(snapshot.id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(records.job_key(snapshot.id))
            for index in records.indexes_of(snapshot.owner, snapshot.task, tag):
                pipe.zrem(index, snapshot.id)
            member = records.expiry_member(snapshot.id, snapshot.task)
            pipe.zrem(records.expiry_key(snapshot.owner, tag), member)
            if snapshot.idempotency_key:
                pipe.delete(records.idempotency_key(snapshot.owner, snapshot.idempotency_key))
            await pipe.execute()

    async def get(self, job_id: str) -> JobSnapshot | None:
        return await self._snapshots.load(job_id)

    async def _load_snapshots(self, job_ids: list[str]) -> list[JobSnapshot | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(records.job_key(job_id))
            rows: list[dict[str, str]] = await pipe.execute()
        return [JobSnapshot.from_hash(row) if row else None for row in rows]

    async def get_many(self, job_ids: list[str]) -> list[JobSnapshot]:
        """Several jobs in one round trip; unknown ids are left out."""
        return [s for s in await self._load_snapshots(job_ids) if s is not None]

    async def transition(
        self,
        snapshot: JobSnapshot,
        state: JobState,
        fields: dict[str, str],
        allowed_from: frozenset[JobState],
    ) -> str:
        """Move a job the caller has read; returns 'ok', 'missing' or the refusing state."""
        outcome, _ = await self.transition_hooked(snapshot, state, fields, allowed_from)
        return outcome

    async def transition_hooked(
        self,
        snapshot: JobSnapshot,
        state: JobState,
        fields: dict[str, str],
        allowed_from: frozenset[JobState],
    ) -> tuple[str, Hooks | None]:
        """Move a job the caller has read; returns 'ok', 'missing' or the refusing state,
        and the webhook events the change triggered (the caller schedules them)."""
        owner, task, workflow = snapshot.owner, snapshot.task, snapshot.workflow_id or ""
        for _ in range(2):
            call = scripts.update_call(
                snapshot.id,
                state,
                fields,
                owner=owner,
                task=task,
                ttl=self._ttl,
                allowed_from=allowed_from,
                workflow=workflow,
            )
            reply = await self._update(keys=call.keys, args=call.args)
            if (actual := scripts.moved(reply)) is None:
                return scripts.settled(reply)
            owner, task, workflow = actual
        raise RuntimeError(f"job {snapshot.id} changed owner or task while it was updated")

    async def page(self, query: PageQuery) -> list[JobSnapshot]:
        """Up to ``query.limit`` matching jobs, newest first: one call per tag (one round
        trip on one Redis), each page exact, merged here."""
        calls = [scripts.page_call(query, tag) for tag in slots.tags()]
        return _merged(await self._pages(calls), query.limit)

    async def page_every_owner(self, query: PageQuery) -> list[JobSnapshot]:
        """The same page over every owner's indexes (an admin's view): per tag, one call
        over that tag's owners (the tags' owner sets read at once, not one after another)."""
        tags = slots.tags()
        owner_sets = await asyncio.gather(
            *(self.client.smembers(records.owners_key(tag)) for tag in tags)
        )
        calls = []
        for tag, members in zip(tags, owner_sets, strict=True):
            owners = sorted(str(owner) for owner in members)
            if owners:
                parts = [scripts.page_call(replace(query, owner=owner), tag) for owner in owners]
                keys = [key for part in parts for key in part.keys]
                calls.append(scripts.ScriptCall(keys=keys, args=parts[0].args))
        return _merged(await self._pages(calls), query.limit)

    async def _pages(self, calls: list[scripts.ScriptCall]) -> list[list[list[str]]]:
        if len(calls) == 1:
            return [await self._page(keys=calls[0].keys, args=calls[0].args)]
        return list(await asyncio.gather(*(self._page(keys=c.keys, args=c.args) for c in calls)))

    async def sweep(self, batch: int = 500) -> int:
        """Take every record that expired out of every index; returns how many were taken.

        Pages never show an expired record anyway (they skip and drop it): this keeps the
        indexes from holding dead entries that no page happens to read.
        """
        due_by = records.to_score(records.now())
        taken = 0
        for tag in slots.tags():
            owners = [str(o) async for o in self.client.sscan_iter(records.owners_key(tag))]
            for owner in owners:
                taken += await self._sweep_owner(owner, tag, due_by, batch)
        return taken

    async def _sweep_owner(self, owner: str, tag: str, due_by: int, batch: int) -> int:
        taken = 0
        start = 0
        while True:
            due = await self.client.zrangebyscore(
                records.expiry_key(owner, tag), "-inf", due_by, start=start, num=batch
            )
            if not due:
                break
            calls = [scripts.sweep_call(owner, tag, str(member)) for member in due]
            if self._cluster:
                # redis-py's cluster pipeline cannot carry a registered script's call.
                outcomes = [await self._sweep(keys=c.keys, args=c.args) for c in calls]
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for call in calls:
                        await self._sweep(keys=call.keys, args=call.args, client=pipe)
                    outcomes = await pipe.execute()
            swept = sum(int(outcome) for outcome in outcomes)
            taken += swept
            # Entries whose record still lives (a clock ahead of Redis's) stay in front.
            start += len(due) - swept
            if len(due) < batch:
                break
        return taken


def _merged(pages: list[list[list[str]]], limit: int) -> list[JobSnapshot]:
    """The newest ``limit`` of several exact pages, by (creation score, id) like the indexes."""
    rows = [_fields(flat) for page in pages for flat in page]
    if len(pages) > 1:
        rows.sort(key=_newest_first, reverse=True)
        rows = rows[:limit]
    return [JobSnapshot.from_hash(fields) for fields in rows]


def _fields(flat: list[str]) -> dict[str, str]:
    """A record from HGETALL's flat field/value list, as the page script returns it."""
    pairs = iter(flat)
    return dict(zip(pairs, pairs, strict=True))


def _newest_first(fields: dict[str, str]) -> tuple[int, str]:
    return records.to_score(datetime.fromisoformat(fields["created_at"])), fields["id"]


async def sweep_forever(store: JobStore, interval: float) -> None:
    """Run :meth:`JobStore.sweep` every ``interval`` seconds until cancelled; any replica may."""
    while True:
        await asyncio.sleep(interval)
        try:
            taken = await store.sweep()
        except RedisError:
            logger.warning(
                "could not sweep expired jobs from the indexes; next try in %ss", interval
            )
            continue
        if taken:
            logger.info("took %d expired jobs out of the listing indexes", taken)
