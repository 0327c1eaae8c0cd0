"""Commands to Redis packed by hiredis in C, as redis-py's own blocking client packs them,
because redis-py's asyncio connection packs in Python, re-joining a buffer per argument: a fair
share of a large ``enqueueMany``'s CPU (upstream: redis/redis-py#4176, PR #4191; drop this module
once a release packs so). The ``hiredis_packing`` speed-up (:mod:`gql.compat.register`) turns it
on only when hiredis packs a sample command to the very bytes redis-py's own code does.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

# What hiredis writes exactly as redis-py does. Anything else (a float: redis-py writes its
# repr; a bool or None: redis-py refuses them; a str subclass; a memoryview) takes
# redis-py's own packing. Checked by type in C: an isinstance per argument cost 0.9 ms for
# an enqueueMany of 100, more than hiredis's whole packing.
_PLAIN = frozenset({str, bytes, int})


def _hiredis_pack(args: tuple[Any, ...]) -> list[bytes] | None:
    """``AbstractConnection.pack_command``'s result, from hiredis (as the blocking client
    packs); None for arguments only redis-py's packing handles as it always did."""
    if isinstance(args[0], str):
        args = (*args[0].encode().split(), *args[1:])
    elif b" " in args[0]:
        args = (*args[0].split(), *args[1:])
    if not _PLAIN.issuperset(map(type, args)):
        return None
    return [hiredis.pack_command(args)]


_subclasses: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing(connection_class: type[AbstractConnection]) -> type[AbstractConnection]:
    """``connection_class`` packing through hiredis (one subclass per class: plain, TLS,
    Sentinel-managed)."""
    if (known := _subclasses.get(connection_class)) is not None:
        return known

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        packed = _hiredis_pack(args)
        return connection_class.pack_command(self, *args) if packed is None else packed

    subclass = type(
        f"Hiredis{connection_class.__name__}", (connection_class,), {"pack_command": pack_command}
    )
    _subclasses[connection_class] = subclass
    return subclass


def install(pool: ConnectionPool) -> ConnectionPool:
    """Make ``pool``'s new connections pack through hiredis (the caller asks only when the
    fast path is on), if the pool writes text as UTF-8 (hiredis's only encoding)."""
    kwargs = pool.connection_kwargs
    utf8 = (kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict")) == (
        "utf-8",
        "strict",
    )
    if utf8:
        pool.connection_class = _packing(pool.connection_class)
    return pool


class _Sample(AbstractConnection):
    """A connection never opened: only its packing is used (default encoding, UTF-8)."""

    def _connection_arguments(self) -> Any:  # pragma: no cover - never connects
        raise NotImplementedError

    async def _connect(self) -> None:  # pragma: no cover - never connects
        raise NotImplementedError

    def repr_pieces(self) -> list[tuple[str, Any]]:
        return []


def check() -> None:
    """hiredis packs as redis-py does: names split, text as UTF-8, numbers, bytes."""
    sample = _packing(_Sample)()  # type: ignore[type-abstract]
    commands: list[tuple[Any, ...]] = [
        ("EVALSHA", "a" * 40, 2, "jobql:job:{0}:x", "k", "é ü 🙂", b"\x00\xff", 7, -3, ""),
        ("CLIENT SETNAME", "jobql"),
        (b"PING",),
        ("ZADD", "k", 1.5, "m"),
    ]
    for command in commands:
        ours = b"".join(sample.pack_command(*command))
        theirs = b"".join(AbstractConnection.pack_command(sample, *command))
        if ours != theirs:
            raise ValueError(f"hiredis packs {command!r} as {ours!r}, redis-py as {theirs!r}")
