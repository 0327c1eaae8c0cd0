"""Job records read and written with redis-py's asyncio client: the loop never waits on I/O.

The scripts' KEYS and ARGV come from the builders in :mod:`tasks.scripts`, shared with the worker.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from strawberry.dataloader import DataLoader

from tasks import records, redis_clients, scripts
from tasks.records import JobSnapshot, JobState
from tasks.scripts import Hooks, PageQuery
from tasks.settings import Settings

logger = logging.getLogger(__name__)


def connect(url: str, settings: Settings) -> aioredis.Redis:
    """A client that fails fast: a Redis that is down must be reported, not waited for.

    Its pool is bounded and makes a burst wait for a free connection (redis-py's default
    async pool refuses the 101st concurrent command with MaxConnectionsError instead).
    """
    return redis_clients.async_client(
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


class JobStore:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
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
        if len(calls) == 1:
            replies = [await self._create(keys=calls[0].keys, args=calls[0].args)]
        else:
            call = scripts.batch_call(calls)
            replies = await self._create_many(keys=call.keys, args=call.args)
        return [str(reply) if reply else None for reply in replies]

    async def announce(self, fields: dict[str, str]) -> None:
        """Publish a new job's PENDING snapshot, once its message is on its way."""
        payload = records.dumps(fields)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.publish(records.job_channel(fields["id"]), payload)
            pipe.publish(records.owner_channel(fields["owner"]), payload)
            await pipe.execute()

    async def discard(self, snapshot: JobSnapshot) -> None:
        """Undo :meth:`create` when the message could not be published: no half-written job."""
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(records.job_key(snapshot.id))
            for index in records.indexes_of(snapshot.owner, snapshot.task):
                pipe.zrem(index, snapshot.id)
            member = records.expiry_member(snapshot.id, snapshot.task)
            pipe.zrem(records.expiry_key(snapshot.owner), member)
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
        """Up to ``query.limit`` matching jobs, newest first, in one round trip."""
        call = scripts.page_call(query)
        rows = await self._page(keys=call.keys, args=call.args)
        return [JobSnapshot.from_event(row) for row in rows]

    async def page_every_owner(self, query: PageQuery) -> list[JobSnapshot]:
        """The same page over every owner's indexes (an admin's view), merged in one call."""
        owners = sorted(str(owner) for owner in await self.client.smembers(records.OWNERS_KEY))
        if not owners:
            return []
        calls = [scripts.page_call(replace(query, owner=owner)) for owner in owners]
        keys = [key for call in calls for key in call.keys]
        rows = await self._page(keys=keys, args=calls[0].args)
        return [JobSnapshot.from_event(row) for row in rows]

    async def sweep(self, batch: int = 500) -> int:
        """Take every record that expired out of every index; returns how many were taken.

        Pages never show an expired record anyway (they skip and drop it): this keeps the
        indexes from holding dead entries that no page happens to read.
        """
        due_by = records.to_score(records.now())
        taken = 0
        async for owner in self.client.sscan_iter(records.OWNERS_KEY):
            start = 0
            while True:
                due = await self.client.zrangebyscore(
                    records.expiry_key(owner), "-inf", due_by, start=start, num=batch
                )
                if not due:
                    break
                async with self.client.pipeline(transaction=False) as pipe:
                    for member in due:
                        call = scripts.sweep_call(owner, str(member))
                        await self._sweep(keys=call.keys, args=call.args, client=pipe)
                    outcomes = await pipe.execute()
                swept = sum(int(outcome) for outcome in outcomes)
                taken += swept
                # Entries whose record still lives (a clock ahead of Redis's) stay in front.
                start += len(due) - swept
                if len(due) < batch:
                    break
        return taken


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
