"""Job events fanned out to the subscribers of this process.

JobQL owns its fan-out rather than building on ``broadcaster``. Measured with broadcaster
0.3.1, its Redis listener dies for good when Redis restarts or kills the pub/sub connection
(subscribers then hang), concurrent first subscriptions to one channel overwrite each other,
it does not wait for Redis to confirm a subscription, and each subscriber's queue grows
without bound. Its public API cannot carry the fixes: ``Broadcast.subscribe`` owns the
subscriber set and gives each subscriber an unbounded queue of raw events, and every event
passes from ``next_published`` through a listener task into those queues, a hop per event
the performance work measured. Fixing that meant overriding its private ``_listener`` and
``subscribe`` with another signature: a dependency JobQL only pretended to use. So:

- :class:`~gql.pubsub.RedisPubSubBackend` (in ``gql.pubsub``) is the one pub/sub connection
  of the process: confirmed subscriptions, reconnection, then a call for a resync;
- :class:`EventQueue` is one subscriber's bounded queue that coalesces progress;
- :class:`JobBroadcast` counts subscriptions per channel under a lock, decodes each event
  once and puts it in its subscribers' queues straight from the reader (no queue, no task
  hop in between).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator

from gql.pubsub import PubSubBackend, RedisPubSubBackend
from tasks.records import JobSnapshot, JobState

__all__ = [
    "RESYNC",
    "EventQueue",
    "EventTally",
    "JobBroadcast",
    "PubSubBackend",
    "RedisPubSubBackend",
    "Resync",
]

logger = logging.getLogger(__name__)


class Resync:
    """Told to every subscriber after a gap: re-read the snapshot, events may be missing."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC = Resync()


class EventTally:
    """Events this process handed to subscribers, and progress merged away: plain integers,
    read by ``gql.metrics`` once a second (no lock or system call per event)."""

    __slots__ = ("coalesced", "delivered")

    def __init__(self) -> None:
        self.delivered = 0
        self.coalesced = 0


class EventQueue:
    """One subscriber's pending events, bounded without losing a state change.

    A progress event replaces the same job's progress event still waiting (latest wins);
    state changes queue in order. Past ``limit`` pending items the queue is emptied into a
    single RESYNC: the subscriber re-reads snapshots, which hold every state reached.
    """

    def __init__(self, limit: int, tally: EventTally | None = None) -> None:
        self._limit = limit
        self._tally = tally or EventTally()
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
                self._tally.coalesced += 1
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


class _ChannelLock:
    """A channel's lock and how many tasks hold or await it; at none it can be dropped."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class JobBroadcast:
    """The fan-out: counted, locked subscriptions and a bounded queue per subscriber."""

    def __init__(self, backend: PubSubBackend, *, queue_limit: int = 256) -> None:
        self.backend = backend
        self._queue_limit = queue_limit
        self._queues: dict[str, set[EventQueue]] = {}
        self._locks: dict[str, _ChannelLock] = {}
        self.tally = EventTally()
        backend.on_message = self._dispatch
        backend.on_resync = self._resync

    async def connect(self) -> None:
        await self.backend.connect()

    async def disconnect(self) -> None:
        await self.backend.disconnect()

    def _dispatch(self, channel: str, data: str) -> None:
        queues = self._queues.get(channel)
        if not queues:
            return
        try:
            snapshot = JobSnapshot.from_event(data)
        except (ValueError, KeyError):
            logger.warning("ignoring a malformed event on %s", channel)
            return
        self.tally.delivered += len(queues)
        for queue in queues:
            queue.put(snapshot)

    def _resync(self) -> None:
        for queues in self._queues.values():
            for queue in queues:
                queue.put(RESYNC)

    @contextlib.asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[EventQueue]:
        """Events of ``channels`` (one queue) from the moment Redis confirmed each of them."""
        queue = EventQueue(self._queue_limit, self.tally)
        joined: list[str] = []
        try:
            for channel in channels:
                async with self._locked(channel):
                    if channel not in self._queues:
                        await self.backend.subscribe(channel)
                        self._queues[channel] = set()
                    self._queues[channel].add(queue)
                joined.append(channel)
            yield queue
        finally:
            for channel in joined:
                await asyncio.shield(self._leave(channel, queue))

    async def _leave(self, channel: str, queue: EventQueue) -> None:
        async with self._locked(channel):
            queues = self._queues.get(channel, set())
            queues.discard(queue)
            if not queues:
                self._queues.pop(channel, None)
                await self.backend.unsubscribe(channel)

    @contextlib.asynccontextmanager
    async def _locked(self, channel: str) -> AsyncIterator[None]:
        """Hold ``channel``'s lock: one SUBSCRIBE or UNSUBSCRIBE of a channel at a time."""
        entry = self._locks.get(channel)
        if entry is None:
            entry = self._locks[channel] = _ChannelLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            # Dropped only when no task holds or awaits it: a waiter woken by a release is
            # not yet the holder, and a new lock for the channel would let both in at once.
            if not entry.users and channel not in self._queues:
                del self._locks[channel]

    def stats(self) -> dict[str, int]:
        return {
            "channels": len(self._queues),
            "subscribers": sum(len(q) for q in self._queues.values()),
            "pending_events": sum(len(s) for q in self._queues.values() for s in q),
            "locks": len(self._locks),
            "reconnects": self.backend.reconnects,
        }
