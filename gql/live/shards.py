"""Sharded pub/sub on a Redis Cluster, one self-healing connection per primary: the update script
SPUBLISHes a job's events on its slot's shard only, and redis-py 8.1's asyncio ``ClusterPubSub``
polls the nodes one after another and resubscribes after a reconnect without telling anyone, so
events are lost unnoticed. Each primary gets a sharded
:class:`~gql.live.pubsub.RedisPubSubBackend`, every channel is routed to its slot's primary from
redis-py's slot map, and a slot that moves makes every subscriber resync, as after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from gql.live.pubsub import RedisPubSubBackend, SlotMoved
from tasks.core import redis_clients
from tasks.core.settings import Settings

logger = logging.getLogger(__name__)

# Between tries to follow a moving slot (about 3 s in all).
_MOVE_PAUSES = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


def _silent(*_: object) -> None:
    """Where events and resyncs go until the fan-out attaches."""


class _AllConnected:
    """Connected when every primary's connection is."""

    def __init__(self, backend: ShardedPubSubBackend) -> None:
        self._backend = backend

    def is_set(self) -> bool:
        nodes = self._backend.nodes.values()
        return bool(nodes) and all(node.connected.is_set() for node in nodes)


class ShardedPubSubBackend:
    """The pub/sub of a cluster, with the interface of one :class:`RedisPubSubBackend`."""

    def __init__(
        self,
        url: str,
        *,
        settings: Settings,
        idle_ping: float = 5.0,
        max_backoff: float = 2.0,
        refresh_every: float = 0.5,
    ) -> None:
        self._url = url
        self._settings = settings
        # Only its slot map is used: which primary serves a channel's slot.
        self._topology = redis_clients.async_cluster(url, self._settings)
        self._idle_ping = idle_ping
        self._max_backoff = max_backoff
        self._refresh_every = refresh_every
        self.nodes: dict[str, RedisPubSubBackend] = {}
        self._home: dict[str, str] = {}
        self._on_message: Callable[[str, str], None] = _silent
        self._on_resync: Callable[[], None] = _silent
        self._rehoming: asyncio.Task[None] | None = None
        self._again = False
        self._last_refresh = 0.0
        self._moves = 0
        self.connected = _AllConnected(self)

    @property
    def on_message(self) -> Callable[[str, str], None]:
        return self._on_message

    @on_message.setter
    def on_message(self, handler: Callable[[str, str], None]) -> None:
        self._on_message = handler
        for node in self.nodes.values():
            node.on_message = handler

    @property
    def on_resync(self) -> Callable[[], None]:
        return self._on_resync

    @on_resync.setter
    def on_resync(self, handler: Callable[[], None]) -> None:
        self._on_resync = handler
        for node in self.nodes.values():
            node.on_resync = handler

    @property
    def reconnects(self) -> int:
        return self._moves + sum(node.reconnects for node in self.nodes.values())

    async def connect(self) -> None:
        """Learn the primaries and start one reader each; a cluster down only delays them."""
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self._topology.initialize()
            await self._sync_nodes()

    async def disconnect(self) -> None:
        if self._rehoming is not None:
            self._rehoming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rehoming
        for node in list(self.nodes.values()):
            await node.disconnect()
        self.nodes.clear()
        await self._topology.aclose()

    async def subscribe(self, channel: str) -> None:
        """SSUBSCRIBE on the primary of the channel's slot, confirmed, following moves."""
        for pause in _MOVE_PAUSES:
            node = await self._primary_of(channel)
            try:
                await node.subscribe(channel)
            except SlotMoved:
                # The node we asked knew better than our map, which the node we refresh
                # from may not know yet either: wait a little for the news to spread.
                await asyncio.sleep(pause)
                await self._refresh(force=True)
                continue
            self._home[channel] = self._name_of(node)
            logger.debug("%s subscribed on %s", channel, self._home[channel])
            return
        raise ConnectionError(f"the slot of {channel} kept moving")

    async def unsubscribe(self, channel: str) -> None:
        name = self._home.pop(channel, None)
        node = self.nodes.get(name or "")
        if node is not None:
            await node.unsubscribe(channel)

    async def ping(self) -> None:
        """Every primary answers."""
        if not self.nodes:  # the cluster was down when the API started
            await self._topology.initialize()
            await self._sync_nodes()
        for node in list(self.nodes.values()):
            await node.ping()

    async def _primary_of(self, channel: str) -> RedisPubSubBackend:
        if not self.nodes:
            await self._topology.initialize()
            await self._sync_nodes()
        primary = self._topology.get_node_from_key(channel)
        node = self.nodes.get(primary.name) if primary is not None else None
        if node is None:
            await self._refresh(force=True)
            primary = self._topology.get_node_from_key(channel)
            node = self.nodes.get(primary.name) if primary is not None else None
        if node is None:
            raise ConnectionError(f"no primary serves the slot of {channel}")
        return node

    def _name_of(self, node: RedisPubSubBackend) -> str:
        return next(name for name, known in self.nodes.items() if known is node)

    async def _sync_nodes(self) -> None:
        """One reader per primary of the slot map: new primaries get one, old ones stop."""
        primaries = {node.name: node for node in self._topology.get_primaries()}
        for name in list(self.nodes):
            if name not in primaries:
                await self.nodes.pop(name).disconnect()
        for name, primary in primaries.items():
            if name not in self.nodes:
                backend = RedisPubSubBackend(
                    self._node_url(primary.host, primary.port),
                    settings=self._settings,
                    idle_ping=self._idle_ping,
                    max_backoff=self._max_backoff,
                    sharded=True,
                    own_channel=self._own_channel(name),
                )
                backend.on_message = self._on_message
                backend.on_resync = self._on_resync
                backend.on_moved = self._moved
                self.nodes[name] = backend
                await backend.connect()

    def _own_channel(self, name: str) -> str:
        """A private channel of a slot this primary serves, found from the slot map."""
        prefix = f"jobql:alive:{time.monotonic_ns()}:"
        for n in itertools.count():
            channel = f"{prefix}{n}"
            primary = self._topology.get_node_from_key(channel)
            if primary is not None and primary.name == name:
                return channel
            if n > 100_000:
                break
        raise ConnectionError(f"{name} serves no slot")

    def _node_url(self, host: str, port: str | int) -> str:
        """The seed URL (scheme, credentials, options) pointed at one node."""
        parts = urlsplit(redis_clients.cluster_seeds(self._url)[0])
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@{host}:{port}" if credentials else f"{host}:{port}"
        return urlunsplit((parts.scheme, netloc, "", parts.query, ""))

    def _moved(self, channel: str | None) -> None:
        """A node said a slot left it, or its connection was lost: re-home in the background."""
        # A move told while a pass runs gets a pass of its own: that one may have read
        # the channel as still held, or subscribed it where it has just been dropped.
        self._again = True
        if self._rehoming is None or self._rehoming.done():
            self._rehoming = asyncio.create_task(self._rehome(), name="jobql-broadcast-rehome")

    async def _refresh(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_refresh < self._refresh_every:
            await asyncio.sleep(self._refresh_every)
        self._last_refresh = time.monotonic()
        await self._topology.nodes_manager.initialize()
        await self._sync_nodes()

    async def _rehome(self) -> None:
        while self._again:
            self._again = False
            await self._rehome_once()

    async def _rehome_once(self) -> None:
        """Subscribe every channel whose slot changed primary there, then resync everyone."""
        try:
            await self._refresh()
        except (aioredis.RedisError, OSError) as exc:
            logger.warning("cluster slot map not refreshed (%s); a reconnect will retry", exc)
            return
        moved = []
        for channel, name in list(self._home.items()):
            primary = self._topology.get_node_from_key(channel)
            old = self.nodes.get(name)
            # A channel the server dropped is followed even where our map (read from a node
            # that may not know of the move yet) still says it is home: SSUBSCRIBE answers
            # -MOVED there, and :meth:`subscribe` refreshes the map until it agrees.
            held = old is not None and old.holds(channel)
            if held and primary is not None and primary.name == name:
                continue
            if old is not None and held:  # moved in the map first (a failover): leave it
                with contextlib.suppress(aioredis.RedisError, OSError):
                    await old.unsubscribe(channel)
            moved.append(channel)
        for channel in moved:
            try:
                await self.subscribe(channel)
            except (ConnectionError, aioredis.RedisError, OSError, TimeoutError) as exc:
                logger.warning("could not follow %s to its new shard: %s", channel, exc)
        if moved:
            self._moves += 1
            logger.info("%d channels followed their slots to new primaries", len(moved))
            self._on_resync()
