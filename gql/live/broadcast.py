"""Job events fanned out to the subscribers of this process: one pub/sub connection
(:mod:`gql.live.pubsub`), each event decoded once and put straight from the reader into every
subscriber's bounded :class:`EventQueue`, which coalesces progress and never drops a state
change. JobQL owns this fan-out rather than building on ``broadcaster``, whose Redis listener
dies for good when Redis restarts, whose queues grow without bound, and whose public API could
not carry the fixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection

from gql.live.pubsub import PubSubBackend, RedisPubSubBackend
from tasks.core.records import JobSnapshot, JobState

__all__ = [
    "RESYNC",
    "EventQueue",
    "EventTally",
    "JobBroadcast",
    "PubSubBackend",
    "RedisPubSubBackend",
    "Resync",
    "Subscription",
]

logger = logging.getLogger(__name__)


class Resync:
    """Told to every subscriber after a gap: re-read the snapshot, events may be missing."""

    def __repr__(self) -> str:
        return "RESYNC"


RESYNC = Resync()


class EventTally:
    """Events this process handed to subscribers, and progress merged away: plain integers,
    read by ``gql.ops.metrics`` once a second (no lock or system call per event)."""

    __slots__ = ("coalesced", "delivered")

    def __init__(self) -> None:
        self.delivered = 0
        self.coalesced = 0


class EventQueue:
    """One subscriber's pending events, bounded without losing a state change.

    A progress event replaces the same job's progress event still waiting (latest wins);
    state changes queue in order. Past ``limit`` pending items the queue is emptied into a
    single RESYNC: the subscriber re-reads snapshots, which hold every state reached.

    Thousands of these live at once, mostly empty: a plain list (a ``deque`` allocates a
    block of 64 slots up front) and a future made only while its one reader waits, instead
    of an ``asyncio.Event`` with a deque of its own.
    """

    __slots__ = ("_items", "_limit", "_progress", "_tally", "_waiter", "high_water")

    def __init__(self, limit: int, tally: EventTally | None = None) -> None:
        self._limit = limit
        self._tally = tally or EventTally()
        self._items: list[list[JobSnapshot | Resync]] = []
        self._progress: dict[str, list[JobSnapshot | Resync]] = {}
        self._waiter: asyncio.Future[None] | None = None
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
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> JobSnapshot | Resync:
        while not self._items:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        slot = self._items.pop(0)  # at most ``limit`` items: a short move, not a deque
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
        # A channel's one queue, or a set of them: a job(id) channel has one listener, and
        # a set of one costs 216 bytes per channel.
        self._queues: dict[str, EventQueue | set[EventQueue]] = {}
        self._locks: dict[str, _ChannelLock] = {}
        self.tally = EventTally()
        backend.on_message = self._dispatch
        backend.on_resync = self._resync

    async def connect(self) -> None:
        await self.backend.connect()

    async def disconnect(self) -> None:
        await self.backend.disconnect()

    def _dispatch(self, channel: str, data: str) -> None:
        listeners = self._queues.get(channel)
        if listeners is None:
            return
        try:
            snapshot = JobSnapshot.from_event(data)
        except (ValueError, KeyError):
            logger.warning("ignoring a malformed event on %s", channel)
            return
        queues = _each(listeners)
        self.tally.delivered += len(queues)
        for queue in queues:
            queue.put(snapshot)

    def _resync(self) -> None:
        for listeners in self._queues.values():
            for queue in _each(listeners):
                queue.put(RESYNC)

    def subscribe(self, *channels: str) -> Subscription:
        """Events of ``channels`` (one queue) from the moment Redis confirmed each of them:
        ``async with broadcast.subscribe(channel) as events``."""
        return Subscription(self, channels, EventQueue(self._queue_limit, self.tally))

    async def join(self, channel: str) -> EventQueue:
        """One channel's events in a new queue from the moment Redis confirmed it; the
        caller gives it back with :meth:`leave`, or holds nothing if this raised."""
        queue = EventQueue(self._queue_limit, self.tally)
        await self._join(channel, queue)
        return queue

    async def leave(self, channel: str, queue: EventQueue) -> None:
        """Give back a joined channel (even when the caller is being cancelled)."""
        if not self._leave_at_once(channel, queue):
            await asyncio.shield(self._leave(channel, queue))

    async def _join(self, channel: str, queue: EventQueue) -> None:
        if channel in self._queues:
            # Held, so confirmed by Redis: no command to send, no lock to take. A leave that
            # unsubscribes takes the channel out of ``_queues`` before its first await.
            self._add(channel, queue)
            return
        async with self._locked(channel):
            if channel not in self._queues:
                await self.backend.subscribe(channel)
            self._add(channel, queue)

    def _add(self, channel: str, queue: EventQueue) -> None:
        listeners = self._queues.get(channel)
        if listeners is None:
            self._queues[channel] = queue
        elif isinstance(listeners, EventQueue):
            self._queues[channel] = {listeners, queue}
        else:
            listeners.add(queue)

    def _leave_at_once(self, channel: str, queue: EventQueue) -> bool:
        """Leave a channel others still hear (no UNSUBSCRIBE): nothing to await or lock."""
        listeners = self._queues.get(channel)
        if not isinstance(listeners, set) or len(listeners) < 2 or queue not in listeners:
            return False
        listeners.discard(queue)
        if len(listeners) == 1:
            self._queues[channel] = next(iter(listeners))
        return True

    async def _leave(self, channel: str, queue: EventQueue) -> None:
        async with self._locked(channel):
            if self._leave_at_once(channel, queue):
                return
            listeners = self._queues.get(channel)
            if listeners is queue or (isinstance(listeners, set) and listeners <= {queue}):
                del self._queues[channel]
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
            # A held channel keeps none: thousands of idle locks were most of its cost.
            if not entry.users:
                del self._locks[channel]

    def stats(self) -> dict[str, int]:
        return {
            "channels": len(self._queues),
            "subscribers": sum(len(_each(q)) for q in self._queues.values()),
            "pending_events": sum(len(s) for q in self._queues.values() for s in _each(q)),
            "locks": len(self._locks),
            "reconnects": self.backend.reconnects,
        }


def _each(listeners: EventQueue | set[EventQueue]) -> Collection[EventQueue]:
    return (listeners,) if isinstance(listeners, EventQueue) else listeners


class Subscription:
    """``async with broadcast.subscribe(*channels) as events``: joined on entry, left on exit
    (even when cancelled). An object rather than a generator-based context manager: a
    ``job(id)`` subscription holds one for its whole life, and a suspended generator's frame
    costs several times this object."""

    __slots__ = ("_broadcast", "_channels", "_joined", "queue")

    def __init__(
        self, broadcast: JobBroadcast, channels: tuple[str, ...], queue: EventQueue
    ) -> None:
        self._broadcast = broadcast
        self._channels = channels
        self._joined = 0
        self.queue = queue

    async def __aenter__(self) -> EventQueue:
        try:
            for channel in self._channels:
                await self._broadcast._join(channel, self.queue)
                self._joined += 1
        except BaseException:
            await self._leave()
            raise
        return self.queue

    async def __aexit__(self, *exc_info: object) -> None:
        await self._leave()

    async def _leave(self) -> None:
        joined, self._joined = self._channels[: self._joined], 0
        for channel in joined:
            await self._broadcast.leave(channel, self.queue)
