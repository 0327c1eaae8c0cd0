"""P13's baseline: the least a process can do to deliver JobQL's progress events, measured
for its CPU per delivered message beside the API's.

One process, one redis-py asyncio pub/sub connection read in one loop, and a ``websockets``
server (its default permessage-deflate on, as the API's uvicorn negotiates it): a client
sends the channels it wants as one JSON list, is told ``ready`` once Redis has confirmed
every one, and from then on gets each message published on them as one text frame, the
bytes exactly as they were published (no decoding, no projection, one send per message).
Whatever JobQL spends beyond this per event is its own. Run as
``python -m bench.baselines.relay <redis url> <port>``; it prints ``ready`` once serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections import defaultdict

import redis.asyncio as aioredis
import uvloop
from redis.asyncio.client import PubSub
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed


class Relay:
    """Who wants which channel, and the one reader that hands each message on."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub
        self.readers_of: dict[bytes, list[ServerConnection]] = defaultdict(list)
        self.unconfirmed: dict[ServerConnection, int] = {}
        self.reader: asyncio.Task[None] | None = None

    async def serve_client(self, connection: ServerConnection) -> None:
        channels: list[str] = json.loads(await connection.recv())
        self.unconfirmed[connection] = len(channels)
        for channel in channels:
            self.readers_of[channel.encode()].append(connection)
        await self.pubsub.subscribe(*channels)
        await connection.wait_closed()

    async def start(self) -> None:
        """Connect and start reading before any client comes: redis-py's pub/sub makes its
        connection on the first subscribe, and clients subscribing at once while there was
        none made one each, all but the last one's confirmations lost (a client then waited
        for ``ready`` for good). ``listen()`` also ends at once while nothing is subscribed."""
        await self.pubsub.subscribe("bench:relay:alive")
        self.reader = asyncio.create_task(self.read_forever())

    async def read_forever(self) -> None:
        async for message in self.pubsub.listen():
            readers = self.readers_of.get(message["channel"], ())
            if message["type"] == "message":
                for connection in readers:
                    with contextlib.suppress(ConnectionClosed):  # a client that left
                        await connection.send(message["data"], text=True)
            elif message["type"] == "subscribe":
                for connection in readers:
                    self.unconfirmed[connection] -= 1
                    if self.unconfirmed[connection] == 0:
                        await connection.send("ready")


async def main(redis_url: str, port: int) -> None:
    client = aioredis.Redis.from_url(redis_url)
    relay = Relay(client.pubsub())
    await relay.start()
    async with serve(relay.serve_client, "127.0.0.1", port, max_size=None, ping_interval=None):
        print("ready", flush=True)
        await asyncio.Future()  # until the bench stops the process


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], int(sys.argv[2])))
