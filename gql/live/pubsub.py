"""One self-healing Redis pub/sub connection per process, read by a single task, because Redis
forgets a connection's subscriptions when it ends (a restart, or ``client-output-buffer-limit``
killing a slow reader) and every event published meanwhile is lost: the reader reconnects with
backoff, subscribes its channels again and then asks for a resync, and a subscription counts only
once Redis confirmed it, so an event published after :meth:`RedisPubSubBackend.subscribe` returns
is never missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import MovedError

from tasks.core import redis_clients
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)


def _nobody_listens(channel: str, data: str) -> None:
    """Where events go until a fan-out attaches to the connection."""


def _nobody_to_resync() -> None:
    """What a reconnect does until a fan-out attaches to the connection."""


def _nobody_to_rehome(channel: str | None) -> None:
    """What a slot move does on a connection that is not one shard's of a cluster."""


class SlotMoved(ConnectionError):
    """A shard channel's slot is served elsewhere now: subscribe it on its new node."""


class Flag(Protocol):
    def is_set(self) -> bool: ...


class PubSubBackend(Protocol):
    """What the fan-out needs of a pub/sub connection: one Redis's, or one per shard."""

    on_message: Callable[[str, str], None]
    on_resync: Callable[[], None]

    @property
    def connected(self) -> Flag: ...

    @property
    def reconnects(self) -> int: ...

    async def connect(self) -> None: ...
    async def disconnect(self) -> None: ...
    async def subscribe(self, channel: str) -> None: ...
    async def unsubscribe(self, channel: str) -> None: ...
    async def ping(self) -> None: ...


class RedisPubSubBackend:
    """One self-healing Redis pub/sub connection for the whole process.

    Its reader calls :attr:`on_message` with each event as it is read and :attr:`on_resync`
    once a lost connection is back; the fan-out that owns the connection sets both.

    ``sharded`` makes it one shard's connection of a cluster (gql.live.shards): SSUBSCRIBE, one
    command per slot, and :attr:`on_moved` when the server says a channel's slot left
    (a ``sunsubscribe`` it did not ask for, or ``-MOVED``). ``own_channel`` must then be a
    channel of a slot this node serves.
    """

    def __init__(
        self,
        url: str,
        *,
        settings: Settings,
        connect_timeout: float | None = None,
        idle_ping: float = 5.0,
        max_backoff: float = 2.0,
        sharded: bool = False,
        own_channel: str | None = None,
    ) -> None:
        if connect_timeout is not None:
            settings = settings.model_copy(update={"connect_timeout": connect_timeout})
        connect_timeout = settings.connect_timeout
        # No read timeout: the reader waits for events and PINGs when idle. No retry: the
        # reader's own loop reconnects (and, behind Sentinel, finds the new master).
        self._client = redis_clients.async_client(
            url, settings, read_timeout=False, retry=Retry(NoBackoff(), retries=0)
        )
        self._timeout = connect_timeout
        self._confirm_timeout = max(10.0, connect_timeout * 4)
        self._idle_ping = idle_ping
        self._max_backoff = max_backoff
        # Every connection subscribes this private channel last: its confirmation means all
        # channels before it are confirmed too, and it keeps redis-py listening when idle.
        self._own_channel = own_channel or f"jobql:alive:{os.getpid()}:{uuid.uuid4().hex}"
        self._sharded = sharded
        self._channels: set[str] = set()
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self.on_message: Callable[[str, str], None] = _nobody_listens
        self.on_resync: Callable[[], None] = _nobody_to_resync
        self.on_moved: Callable[[str | None], None] = _nobody_to_rehome
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._heard = False  # whether anything was read since the watch last looked

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
        await redis_clients.aclose(self._client)

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
            await self._subscribe(pubsub, channel)
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
                if self._sharded:
                    await pubsub.sunsubscribe(channel)
                else:
                    await pubsub.unsubscribe(channel)

    def holds(self, channel: str) -> bool:
        """Whether the channel is still wanted here (the server drops a moved slot's)."""
        return channel in self._channels

    async def _subscribe(self, pubsub: PubSub, *channels: str) -> None:
        if not self._sharded:
            await pubsub.subscribe(*channels)
            return
        # One SSUBSCRIBE may only name channels of one slot; the last channel goes last.
        *rest, last = channels
        by_slot: defaultdict[int, list[str]] = defaultdict(list)
        for channel in rest:
            by_slot[key_slot(channel.encode())].append(channel)
        for group in by_slot.values():
            await pubsub.ssubscribe(*group)
        await pubsub.ssubscribe(last)

    async def ping(self) -> None:
        await self._client.ping()

    async def _read_forever(self) -> None:
        backoff = 0.05
        first = True
        while True:
            pubsub = self._client.pubsub()
            try:
                # Our own channel last: its confirmation confirms every one before it.
                await self._subscribe(pubsub, *self._channels, self._own_channel)
                self._pubsub = pubsub
                await self._read_watched(pubsub, resync=not first)
            except Exception as exc:
                # Whatever ends a connection, the reader outlives it: subscribers depend on it.
                if not isinstance(exc, aioredis.RedisError | OSError):
                    logger.exception("the broadcast reader failed; reconnecting")
                elif self.connected.is_set():
                    logger.warning("broadcast connection lost (%s); reconnecting", exc)
                self.connected.clear()
                self._pubsub = None
                self._fail_confirmations(ConnectionError("broadcast connection lost"))
                if self._sharded:
                    self.on_moved(None)  # a failover may have moved this node's slots
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            finally:
                first = False
            backoff = 0.05

    async def _read_watched(self, pubsub: PubSub, *, resync: bool) -> None:
        """The read loop, and beside it a watch that PINGs a quiet connection. The read waits
        with no timer: redis-py enters a timeout for every message read with one, and that
        was a sixth of the API's CPU per delivered event. Whichever ends first ends both."""
        reading = asyncio.create_task(self._read(pubsub, resync=resync))
        watching = asyncio.create_task(self._watch(pubsub))
        try:
            done, _ = await asyncio.wait({reading, watching}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # what ended it: a lost connection, a PING not answered
        finally:
            for task in (reading, watching):
                task.cancel()
            await asyncio.gather(reading, watching, return_exceptions=True)

    async def _watch(self, pubsub: PubSub) -> None:
        """PING after ``idle_ping`` seconds in which nothing was read; nothing read in the
        next ``idle_ping`` either (not even the PONG) counts as a lost connection."""
        pinged = False
        while True:
            self._heard = False
            await asyncio.sleep(self._idle_ping)
            if self._heard:
                pinged = False
            elif pinged:
                raise aioredis.ConnectionError("no answer to PING on the pub/sub connection")
            else:
                await pubsub.ping()
                pinged = True

    async def _read(self, pubsub: PubSub, *, resync: bool) -> None:
        while True:
            try:
                message = await pubsub.get_message(timeout=None)
            except MovedError:
                # An SSUBSCRIBE of a slot this node no longer serves: the replies come in
                # order, but redis-py does not say whose this is; the waiting ones retry.
                self._fail_confirmations(SlotMoved("a channel's slot moved"))
                self.on_moved(None)
                continue
            self._heard = True
            if message is None:
                continue
            kind, channel = message["type"], message["channel"]
            if kind in ("message", "smessage"):
                try:
                    self.on_message(channel, message["data"])
                except Exception:
                    # One bad event must not stop the reader every subscriber depends on.
                    logger.exception("could not deliver an event on %s", channel)
            elif kind == "sunsubscribe" and (
                channel in self._channels or channel == self._own_channel
            ):
                # Not asked for: the server dropped it, its slot now lives on another node.
                self._channels.discard(channel)
                self.on_moved(channel)
            elif kind in ("subscribe", "ssubscribe"):
                future = self._confirmations.get(channel)
                if future is not None and not future.done():
                    future.set_result(None)
                if channel == self._own_channel:
                    self.connected.set()
                    if resync:
                        self.reconnects += 1
                        logger.info("broadcast connection restored; subscribers resync")
                        self.on_resync()

    def _fail_confirmations(self, error: Exception) -> None:
        for future in self._confirmations.values():
            if not future.done():
                future.set_exception(error)
