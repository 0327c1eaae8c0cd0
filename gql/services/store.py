"""Job records read and written with redis-py's asyncio client, so the loop never waits on I/O,
through the script builders of :mod:`tasks.core.scripts` it shares with the worker. An enqueue
answers exactly even while Redis is paused (issue 30): its create script carries a deadline on
Redis's own clock (:func:`tasks.core.scripts.guarded`), so a script Redis runs late writes
nothing, and a reply that arrives after the API answered takes the job back
(:meth:`JobStore.withdraw`) unless a worker started it already.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from strawberry.dataloader import DataLoader

from gql.compat import packing
from gql.compat import register as compat
from gql.services.errors import ServiceUnavailable
from tasks.core import records, redis_clients, scripts, slots, timeline
from tasks.core.records import JobSnapshot, JobState
from tasks.core.scripts import Hooks, PageQuery
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

# How long past an enqueue's deadline the API still waits for Redis's reply: a reply sent
# in time (the script ran before the deadline) arrives within it unless Redis froze right
# between running the script and writing its reply. It also covers the error of the
# clock offset below (half a TIME round trip, at most a quarter of it).
REPLY_GRACE = 0.5
# How often the offset between Redis's clock and this process's is measured again.
CLOCK_REFRESH = 30.0
# Once an enqueue found Redis stalled, the next ones answer at once, sending nothing, for
# this long (then one tries again): otherwise a flood of them waits its turn for the
# operations in flight (JOBQL_MAX_CONCURRENT_OPERATIONS) and answers well past the bound.
REDIS_DOWN_FOR = 1.0
# Items of one create call: (record fields, idempotency key, Celery message).
Item = tuple[dict[str, str], str | None, tuple[str, str] | None]


class ServerClock:
    """Redis's clock (``TIME``) as this process sees it: an offset to ``time.monotonic``.

    A deadline for a script must be on the clock the script reads, and the API's own may
    differ from the Redis host's. Measured on first use, then again in the background every
    ``CLOCK_REFRESH`` seconds; a sample counts only if its round trip was short, since the
    offset is known to half of it.
    """

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._offset: int | None = None  # µs: server time minus monotonic time
        self._measured = 0.0
        self._refresh: asyncio.Task[None] | None = None

    async def offset(self) -> int:
        if self._offset is None:
            await self._measure()
        elif time.monotonic() - self._measured > CLOCK_REFRESH and (
            self._refresh is None or self._refresh.done()
        ):
            self._refresh = asyncio.ensure_future(self._measure_quietly())
        assert self._offset is not None
        return self._offset

    async def _measure(self) -> None:
        before = time.monotonic()
        seconds, micros = await self._client.time()
        after = time.monotonic()
        if after - before > REPLY_GRACE / 2:
            raise ServiceUnavailable("Redis answers too slowly to enqueue safely")
        self._offset = seconds * 1_000_000 + micros - int((before + after) / 2 * 1_000_000)
        self._measured = after

    async def _measure_quietly(self) -> None:
        try:
            await self._measure()
        except Exception as exc:  # the last offset stays; the next enqueue tries again
            logger.info("could not measure Redis's clock again: %s", exc)


def connect(url: str, settings: Settings) -> aioredis.Redis:
    """A client that fails fast: a Redis that is down must be reported, not waited for.

    Its pool is bounded and makes a burst wait for a free connection (redis-py's default
    async pool refuses the 101st concurrent command with MaxConnectionsError instead), and
    packs commands in C (:mod:`gql.compat.packing`).
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
        # Unguarded: bulk seeding in a pipeline (tests, benchmarks), where nothing waits.
        self._create = client.register_script(scripts.CREATE_SCRIPT)
        self._create_one = client.register_script(scripts.GUARDED_CREATE_SCRIPT)
        self._create_many = client.register_script(scripts.GUARDED_CREATE_MANY_SCRIPT)
        self._withdraw = client.register_script(scripts.WITHDRAW_SCRIPT)
        # An enqueue's deadline: JOBQL_PUBLISH_TIMEOUT, as for a broker of its own.
        self._budget = settings.publish_timeout
        self._clock = ServerClock(client)
        self._late: set[asyncio.Task[object]] = set()  # create calls answered already
        self._down_until = 0.0  # monotonic time until which enqueues fail without trying
        self._update = client.register_script(scripts.UPDATE_SCRIPT)
        self._page = client.register_script(scripts.PAGE_SCRIPT)
        self._sweep = client.register_script(scripts.SWEEP_SCRIPT)
        # Reads issued in the same loop tick (a burst of queries or of new subscriptions)
        # share one pipeline: one round trip, one pooled connection. No caching.
        self._snapshots = DataLoader(self._load_snapshots, max_batch_size=500, cache=False)
        self._logs = DataLoader(self._load_logs, max_batch_size=500, cache=False)

    async def create_many(self, batch: list[Item]) -> list[str | None]:
        """Write new PENDING records, all in one atomic call: one round trip per batch.

        Each item is ``(fields, idempotency key, message)``; with a message (queue key,
        Celery message) it is pushed and the job announced in the same call: the broker is
        this Redis. Returns, per item, None when created or the id of the job its
        idempotency key already points to. Raises :class:`ServiceUnavailable` when Redis
        does not answer within ``JOBQL_PUBLISH_TIMEOUT`` + ``REPLY_GRACE``: then nothing
        was written (see the module's note for the one window left).
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
                group = [batch[i] for i in indexes]
                for index, reply in zip(
                    indexes,
                    await self._create_group(group, [calls[i] for i in indexes]),
                    strict=True,
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

    async def _create_group(
        self, items: list[Item], calls: list[scripts.ScriptCall]
    ) -> list[object]:
        single = len(calls) == 1
        call = calls[0] if single else scripts.batch_call(calls)
        reply = await self._guarded(self._create_one if single else self._create_many, call, items)
        guard = scripts.guard_reply(reply)
        if guard == scripts.LATE:
            raise ServiceUnavailable("Redis did not run the enqueue in time; nothing was written")
        if guard == scripts.AGAIN:
            return await self._written(calls)
        return [reply] if single else list(reply)  # type: ignore[call-overload]

    async def _guarded(self, script: Any, call: scripts.ScriptCall, items: list[Item]) -> object:
        """The create call with its deadline, answered within the deadline + the grace.

        The call is never cancelled: a reply that comes after the answer is read, and a job
        it says was created is taken back (:meth:`_late_reply`).
        """
        started = time.monotonic()
        if started < self._down_until:
            raise ServiceUnavailable("Redis stalled a moment ago; nothing was written")
        wait = self._budget + REPLY_GRACE
        try:
            offset = await asyncio.wait_for(self._clock.offset(), wait)
        except TimeoutError:
            self._down_until = time.monotonic() + REDIS_DOWN_FOR
            raise ServiceUnavailable("Redis did not answer; nothing was written") from None
        deadline = offset + int((started + self._budget) * 1_000_000)
        task = asyncio.ensure_future(script(keys=call.keys, args=[deadline, *call.args]))
        self._late.add(task)
        task.add_done_callback(self._late.discard)
        await asyncio.wait({task}, timeout=max(0.0, started + wait - time.monotonic()))
        for _ in range(3):
            if task.done():
                break
            # A reply already in the socket (this loop stalled past the timer) is read.
            await asyncio.sleep(0)
        if not task.done():
            self._down_until = time.monotonic() + REDIS_DOWN_FOR
            task.add_done_callback(functools.partial(self._late_reply, items))
            raise ServiceUnavailable("Redis did not answer in time; nothing was written")
        reply = task.result()
        if scripts.guard_reply(reply) == scripts.LATE:
            self._down_until = time.monotonic() + REDIS_DOWN_FOR
        return reply

    async def _written(self, calls: Sequence[scripts.ScriptCall]) -> list[object]:
        """Each item's reply, read back after a repeated send found the first had run:
        None where its record exists, else the job its idempotency key names."""
        async with self.client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.exists(call.keys[0])
                pipe.get(call.keys[7])
            found = await pipe.execute()
        pairs = zip(found[::2], found[1::2], strict=True)
        return [None if exists else job for exists, job in pairs]

    def _late_reply(self, items: list[Item], task: asyncio.Task[object]) -> None:
        """A create answered SERVICE_UNAVAILABLE whose reply came after all."""
        if task.cancelled() or task.exception() is not None:
            return
        reply = task.result()
        if scripts.guard_reply(reply) == scripts.LATE:
            return  # refused by the deadline, as the answer said: nothing was written
        if scripts.guard_reply(reply) == scripts.AGAIN:
            made = [fields for fields, _, _ in items]
        else:
            found = [reply] if len(items) == 1 else list(reply)  # type: ignore[call-overload]
            made = [fields for (fields, _, _), got in zip(items, found, strict=True) if not got]
        if made:
            logger.error(
                "Redis ran an enqueue answered SERVICE_UNAVAILABLE (it froze between running "
                "it and replying); taking back jobs %s",
                [fields["id"] for fields in made],
            )
            messages = {fields["id"]: message for fields, _, message in items}
            taking_back = asyncio.ensure_future(self._take_back(made, messages))
            self._late.add(taking_back)
            taking_back.add_done_callback(self._late.discard)

    async def _take_back(
        self, made: list[dict[str, str]], messages: dict[str, tuple[str, str] | None]
    ) -> None:
        for fields in made:
            try:
                outcome = await self.withdraw(fields, messages.get(fields["id"]))
            except Exception:
                logger.exception("could not take back job %s", fields["id"])
                continue
            if outcome not in ("ok", "missing"):
                logger.error(
                    "job %s was answered SERVICE_UNAVAILABLE but a worker took it (%s)",
                    fields["id"],
                    outcome,
                )

    async def withdraw(
        self,
        fields: dict[str, str],
        message: tuple[str, str] | None = None,
        *,
        announce: bool = True,
    ) -> str:
        """Take back a job whose enqueue fails, unless a worker took it already.

        Returns 'ok' (gone, and a late message of it will be skipped), 'missing', or the
        state of the job a worker started (it stays). With ``announce``, whoever saw its
        PENDING gets its end (REVOKED, ``NotSent``).
        """
        unsent = records.unsent(fields) if announce else None
        call = scripts.withdraw_call(fields, unsent, ttl=self._ttl, message=message)
        return str(await self._withdraw(keys=call.keys, args=call.args))

    async def announce(self, fields: dict[str, str]) -> None:
        """Publish a new job's PENDING snapshot, once its message is on its way."""
        payload = records.dumps(fields)
        channels = records.channels_of(fields["id"], fields["owner"])
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

    async def logs(self, job_id: str, last: int) -> list[str]:
        """The newest ``last`` (> 0) log lines of a job, oldest first, as stored
        (:mod:`tasks.core.timeline`); reads of one loop tick share a round trip."""
        return await self._logs.load((job_id, last))

    async def _load_logs(self, wanted: list[tuple[str, int]]) -> list[list[str]]:
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id, last in wanted:
                pipe.lrange(timeline.logs_key(job_id), -last, -1)
            return list(await pipe.execute())

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

    async def transition_many(
        self,
        snapshots: Sequence[JobSnapshot],
        state: JobState,
        fields: dict[str, str],
        allowed_from: frozenset[JobState],
    ) -> list[tuple[str, Hooks | None]]:
        """:meth:`transition_hooked` for many jobs the caller read, in one pipelined round
        trip (one call per job on a cluster, all at once); a job whose owner, task or workflow
        changed since it was read is moved again on its own."""
        calls = [
            scripts.update_call(
                s.id,
                state,
                fields,
                owner=s.owner,
                task=s.task,
                ttl=self._ttl,
                allowed_from=allowed_from,
                workflow=s.workflow_id or "",
            )
            for s in snapshots
        ]
        if self._cluster:
            # redis-py's cluster pipeline cannot carry a registered script's call.
            replies = await asyncio.gather(*(self._update(keys=c.keys, args=c.args) for c in calls))
        else:
            async with self.client.pipeline(transaction=False) as pipe:
                for call in calls:
                    await self._update(keys=call.keys, args=call.args, client=pipe)
                replies = await pipe.execute()
        return [
            await self.transition_hooked(snapshot, state, fields, allowed_from)
            if scripts.moved(reply) is not None
            else scripts.settled(reply)
            for snapshot, reply in zip(snapshots, replies, strict=True)
        ]

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
