"""Which hash tag each job-record key carries, so that one job's keys, and the scripts that touch
them, fall in one Redis Cluster slot. A job's tag comes from its id, so a read by id needs
nothing else, and each owner's indexes are kept once per tag, moved in the same atomic step as
the record; tagging by job rather than by owner spreads every owner evenly (with authentication
off every job is ``anonymous``'s), at the price of a page reading ``shards`` slots, merged
exactly by the API.
"""

from __future__ import annotations

import uuid
import zlib
from dataclasses import dataclass
from functools import lru_cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot


@dataclass(frozen=True, slots=True)
class Layout:
    """This process's layout: how many tags, and whether events use sharded pub/sub."""

    shards: int = 1
    sharded_pubsub: bool = False


_layout = Layout()


def configure(layout: Layout) -> None:
    """Set the layout once at start-up (the API's app factory, the worker's Celery app)."""
    global _layout
    _layout = layout


def current() -> Layout:
    return _layout


@lru_cache(maxsize=8)
def tags_for(shards: int) -> tuple[str, ...]:
    """``shards`` short tags, tag ``i`` hashing into the ``i``-th equal range of slots."""
    found: list[str] = []
    width = REDIS_CLUSTER_HASH_SLOTS / shards
    candidate = 0
    for index in range(shards):
        low, high = int(index * width), int((index + 1) * width)
        while not low <= key_slot(str(candidate).encode()) < high:
            candidate += 1
        found.append(str(candidate))
        candidate = 0
    return tuple(found)


def tags() -> tuple[str, ...]:
    """Every tag of this process's layout: where a listing looks."""
    return tags_for(_layout.shards)


def tag_of(text: str) -> str:
    """The tag of a job or workflow id (or of any other name a key is found by)."""
    return tag_for(text, _layout.shards)


def tag_for(text: str, shards: int) -> str:
    """:func:`tag_of` in a layout of ``shards`` tags."""
    if shards == 1:
        return tags_for(1)[0]
    return tags_for(shards)[zlib.crc32(text.encode()) % shards]


def new_id(tag: str | None = None) -> str:
    """A fresh job id, on ``tag`` when one is asked for (about ``shards`` draws of uuid4)."""
    while True:
        candidate = str(uuid.uuid4())
        if tag is None or tag_of(candidate) == tag:
            return candidate
