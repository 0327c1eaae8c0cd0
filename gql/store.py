"""Job records read and written with redis-py's asyncio client: the loop never waits on I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from strawberry.dataloader import DataLoader

from tasks import records
from tasks.records import JobSnapshot, JobState
from tasks.settings import Settings


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of an owner's jobs, newest first, after an optional ``(score, id)`` cursor."""

    owner: str
    limit: int
    after: tuple[int, str] | None = None
    states: frozenset[JobState] = frozenset()
    task: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def connect(url: str, settings: Settings) -> aioredis.Redis:
    """A client that fails fast: a Redis that is down must be reported, not waited for.

    Its pool is bounded and makes a burst wait for a free connection (redis-py's default
    async pool refuses the 101st concurrent command with MaxConnectionsError instead).
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        # Waiting for a free connection is queueing, not a failure; a Redis that is down
        # still fails at once, since connecting is refused or times out on its own.
        timeout=settings.socket_timeout * 4,
        decode_responses=True,
        socket_connect_timeout=settings.connect_timeout,
        socket_timeout=settings.socket_timeout,
        health_check_interval=30,
        # One immediate retry heals a pooled connection that a Redis restart closed; more
        # (redis-py's default backs off for seconds) would turn "down" into a hang.
        retry=Retry(NoBackoff(), retries=1),
    )
    return aioredis.Redis(connection_pool=pool)


class JobStore:
    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self._ttl = settings.job_retention_seconds
        self._scan_cap = 10_000
        self._create = client.register_script(records.CREATE_SCRIPT)
        self._create_many = client.register_script(records.CREATE_MANY_SCRIPT)
        self._update = client.register_script(records.UPDATE_SCRIPT)
        self._page = client.register_script(records.PAGE_SCRIPT)
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
        calls = [self._create_call(*item) for item in batch]
        if len(calls) == 1:
            replies = [await self._create(keys=calls[0][0], args=calls[0][1])]
        else:
            keys, args = records.batch_call(calls)
            replies = await self._create_many(keys=keys, args=args)
        return [str(reply) if reply else None for reply in replies]

    def _create_call(
        self,
        fields: dict[str, str],
        idempotency: str | None,
        message: tuple[str, str] | None = None,
    ) -> tuple[list[Any], list[Any]]:
        job_id, owner = fields["id"], fields["owner"]
        created = datetime.fromisoformat(fields["created_at"])
        queue, body = message or ("", "")
        keys: list[Any] = [
            records.job_key(job_id),
            records.index_key(owner),
            records.idempotency_key(owner, idempotency) if idempotency else "",
            queue,
        ]
        args: list[Any] = [
            self._ttl,
            records.to_score(created),
            job_id,
            records.JOB_KEY_PREFIX,
            body,
            records.job_channel(job_id),
            records.owner_channel(owner),
            records.dumps(fields) if message else "",
            *records.flatten(fields),
        ]
        return keys, args

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
            pipe.zrem(records.index_key(snapshot.owner), snapshot.id)
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
        job_id: str,
        state: JobState,
        fields: dict[str, str],
        allowed_from: frozenset[JobState],
    ) -> str:
        outcome = await self._update(
            keys=[records.job_key(job_id)],
            args=[
                self._ttl,
                state.value,
                records.now().isoformat(),
                records.job_channel(job_id),
                records.OWNER_CHANNEL_PREFIX,
                ",".join(sorted(allowed_from)),
                *records.flatten(fields),
            ],
        )
        return str(outcome)

    async def page(self, query: PageQuery) -> list[JobSnapshot]:
        """Up to ``query.limit`` jobs in one round trip, filtered inside Redis."""
        high: Any = "+inf"
        if query.created_before is not None:
            high = f"({records.to_score(query.created_before)}"
        if query.after is not None:
            after_score = query.after[0]
            if query.created_before is None or after_score < records.to_score(query.created_before):
                high = after_score
        low: Any = "-inf"
        if query.created_after is not None:
            low = f"({records.to_score(query.created_after)}"
        rows = await self._page(
            keys=[records.index_key(query.owner)],
            args=[
                high,
                low,
                query.after[0] if query.after else "",
                query.after[1] if query.after else "",
                query.limit,
                ",".join(sorted(query.states)),
                query.task or "",
                records.JOB_KEY_PREFIX,
                self._scan_cap,
            ],
        )
        return [JobSnapshot.from_event(row) for row in rows]
