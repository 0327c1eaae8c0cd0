"""Job events from Redis pub/sub, fanned out to subscribers with ``broadcaster``.

broadcaster 0.3.1 is the fan-out API, but measured here its Redis side fails in ways a job
watcher cannot afford: its listener dies for good when Redis restarts or kills the pub/sub
connection (subscribers then hang), concurrent first subscriptions to one channel overwrite
each other, it does not wait for Redis to confirm a subscription, and each subscriber's
queue grows without bound. So this module keeps ``Broadcast`` as the API and supplies:

- :class:`RedisPubSubBackend`: one pub/sub connection per process that confirms every
  SUBSCRIBE, reconnects with backoff, re-subscribes its channels and then announces a
  resync so subscribers re-read what they may have missed;
- :class:`JobBroadcast`: subscription counting under a per-channel lock, events decoded once
  per message and handed to subscribers straight from the reader (no queue, no task hop in
  between), and a bounded :class:`EventQueue` per subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis
from broadcaster import Broadcast, Event
from broadcaster._backends.base import BroadcastBackend
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tasks.records import JobSnapshot, JobState

logger = logging.getLogger(__name__)

RESYNC_CHANNEL = "jobql:resync"


class Resync:
    """Told to every subscriber after a gap: re-read the snapshot, events may be missing."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC = Resync()


class RedisPubSubBackend(BroadcastBackend):
    """One self-healing Redis pub/sub connection for the whole process."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 1.0,
        idle_ping: float = 5.0,
        max_backoff: float = 2.0,
    ) -> None:
        self._client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), retries=0),
            decode_responses=True,
        )
        self._timeout = connect_timeout
        self._confirm_timeout = max(10.0, connect_timeout * 4)
        self._idle_ping = idle_ping
        self._max_backoff = max_backoff
        # Every connection subscribes this private channel last: its confirmation means all
        # channels before it are confirmed too, and it keeps redis-py listening when idle.
        self._own_channel = f"jobql:alive:{os.getpid()}:{uuid.uuid4().hex}"
        self._channels: set[str] = set()
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        # Where each event goes, as soon as it is read. Plain ``Broadcast`` pulls events with
        # ``next_published`` from a queue; :class:`JobBroadcast` installs its own dispatch.
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self.deliver: Callable[[Event], None] = self._events.put_nowait
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def connect(self) -> None:
        """Start the reader; Redis being down now only delays the first connection."""
        self._reader = asyncio.create_task(self._read_forever(), name="jobql-broadcast")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), self._timeout * 2)

    async def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._client.aclose()

    async def subscribe(self, channel: str) -> None:
        """Subscribe and wait for Redis to confirm: from then on no event is missed."""
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            self._channels.discard(channel)
            raise ConnectionError("the broadcast connection to Redis is down")
        confirmed = self._confirmations.setdefault(
            channel, asyncio.get_running_loop().create_future()
        )
        try:
            await pubsub.subscribe(channel)
            # A lost connection fails this at once; the timeout only guards a hung Redis,
            # and must allow for a burst of thousands of subscriptions on a busy loop.
            await asyncio.wait_for(asyncio.shield(confirmed), self._confirm_timeout)
        except BaseException:
            self._channels.discard(channel)
            raise
        finally:
            if self._confirmations.get(channel) is confirmed:
                del self._confirmations[channel]

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(aioredis.RedisError, OSError):
                await pubsub.unsubscribe(channel)

    async def publish(self, channel: str, message: Any) -> None:
        await self._client.publish(channel, message)

    async def next_published(self) -> Event:
        return await self._events.get()

    async def ping(self) -> None:
        await self._client.ping()

    async def _read_forever(self) -> None:
        backoff = 0.05
        first = True
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(*self._channels, self._own_channel)
                self._pubsub = pubsub
                await self._read(pubsub, resync=not first)
            except (aioredis.RedisError, OSError) as exc:
                if self.connected.is_set():
                    logger.warning("broadcast connection lost (%s); reconnecting", exc)
                self.connected.clear()
                self._pubsub = None
                for future in self._confirmations.values():
                    if not future.done():
                        future.set_exception(ConnectionError("broadcast connection lost"))
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            finally:
                first = False
            backoff = 0.05

    async def _read(self, pubsub: PubSub, *, resync: bool) -> None:
        awaiting_pong = False
        while True:
            message = await pubsub.get_message(timeout=self._idle_ping)
            if message is None:
                if awaiting_pong:
                    raise aioredis.ConnectionError("no answer to PING on the pub/sub connection")
                await pubsub.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                try:
                    self.deliver(Event(channel, message["data"]))
                except Exception:
                    # One bad event must not stop the reader every subscriber depends on.
                    logger.exception("could not deliver an event on %s", channel)
            elif kind == "subscribe":
                future = self._confirmations.get(channel)
                if future is not None and not future.done():
                    future.set_result(None)
                if channel == self._own_channel:
                    self.connected.set()
                    if resync:
                        self.reconnects += 1
                        logger.info("broadcast connection restored; subscribers resync")
                        self.deliver(Event(RESYNC_CHANNEL, ""))


class EventQueue:
    """One subscriber's pending events, bounded without losing a state change.

    A progress event replaces the same job's progress event still waiting (latest wins);
    state changes queue in order. Past ``limit`` pending items the queue is emptied into a
    single RESYNC: the subscriber re-reads snapshots, which hold every state reached.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: deque[list[JobSnapshot | Resync]] = deque()
        self._progress: dict[str, list[JobSnapshot | Resync]] = {}
        self._ready = asyncio.Event()
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: JobSnapshot | Resync) -> None:
        if isinstance(item, JobSnapshot) and item.state is JobState.PROGRESS:
            waiting = self._progress.get(item.id)
            if waiting is not None:
                waiting[0] = item
                return
        if isinstance(item, Resync) or len(self._items) >= self._limit:
            self._items.clear()
            self._progress.clear()
            self._items.append([RESYNC])
        else:
            slot: list[JobSnapshot | Resync] = [item]
            self._items.append(slot)
            if item.state is JobState.PROGRESS:
                self._progress[item.id] = slot
            else:
                # Progress after this state change must queue after it, not merge before it.
                self._progress.pop(item.id, None)
        self.high_water = max(self.high_water, len(self._items))
        self._ready.set()

    async def get(self) -> JobSnapshot | Resync:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        slot = self._items.popleft()
        item = slot[0]
        if isinstance(item, JobSnapshot) and self._progress.get(item.id) is slot:
            del self._progress[item.id]
        return item


class JobBroadcast(Broadcast):
    """``Broadcast`` with counted, locked subscriptions and bounded subscriber queues."""

    def __init__(self, backend: RedisPubSubBackend, *, queue_limit: int = 256) -> None:
        super().__init__(backend=backend)
        self.backend = backend
        self._queue_limit = queue_limit
        self._queues: dict[str, set[EventQueue]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        backend.deliver = self._dispatch

    async def _listener(self) -> None:
        """Nothing to pull: the backend's reader calls :meth:`_dispatch` for each event."""
        await asyncio.Event().wait()

    def _dispatch(self, event: Event) -> None:
        if event.channel == RESYNC_CHANNEL:
            for channel_queues in self._queues.values():
                for queue in channel_queues:
                    queue.put(RESYNC)
            return
        queues = self._queues.get(event.channel)
        if not queues:
            return
        try:
            snapshot = JobSnapshot.from_event(event.message)
        except (ValueError, KeyError):
            logger.warning("ignoring a malformed event on %s", event.channel)
            return
        for queue in queues:
            queue.put(snapshot)

    @contextlib.asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[EventQueue]:  # type: ignore[override]
        """Events of ``channel`` from the moment Redis confirmed the subscription."""
        queue = EventQueue(self._queue_limit)
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            if channel not in self._queues:
                await self._backend.subscribe(channel)
                self._queues[channel] = set()
            self._queues[channel].add(queue)
        try:
            yield queue
        finally:
            await asyncio.shield(self._leave(channel, queue, lock))

    async def _leave(self, channel: str, queue: EventQueue, lock: asyncio.Lock) -> None:
        async with lock:
            queues = self._queues.get(channel, set())
            queues.discard(queue)
            if not queues:
                self._queues.pop(channel, None)
                await self._backend.unsubscribe(channel)
        if not lock.locked() and channel not in self._queues:
            self._locks.pop(channel, None)

    def stats(self) -> dict[str, int]:
        return {
            "channels": len(self._queues),
            "subscribers": sum(len(q) for q in self._queues.values()),
            "pending_events": sum(len(s) for q in self._queues.values() for s in q),
            "locks": len(self._locks),
            "reconnects": self.backend.reconnects,
        }
