"""A lean HTTP/1.1 keep-alive load generator on raw asyncio streams (with uvloop).

httpx spends more CPU per request than the API under test does, so on a two-core machine
it, not the server, would set the pace. This client writes prepared request bytes and reads
only the status line, headers and Content-Length body: a few microseconds per request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import auth


@dataclass
class LoadResult:
    completed: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    first_failure: str | None = None

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0


def post_request(host: str, port: int, path: str, body: dict[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth.header_lines(path)}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return status, await reader.readexactly(length)


async def run(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    total: int,
    concurrency: int,
    ok: Callable[[int, bytes], bool] = lambda status, _: status == 200,
    on_progress: Callable[[int], None] | None = None,
    deadline: float | None = None,
) -> LoadResult:
    """Send ``total`` requests over ``concurrency`` keep-alive connections, closed loop."""
    result = LoadResult()
    issued = 0

    async def lane() -> None:
        nonlocal issued
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while issued < total and (deadline is None or time.monotonic() < deadline):
                n = issued
                issued += 1
                sent = time.perf_counter()
                writer.write(make_request(n))
                status, body = await _read_response(reader)
                result.latencies.append(time.perf_counter() - sent)
                if ok(status, body):
                    result.completed += 1
                else:
                    result.failed += 1
                    result.first_failure = result.first_failure or body[:300].decode(
                        errors="replace"
                    )
                if on_progress is not None:
                    on_progress(result.completed + result.failed)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def open_loop(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    *,
    rate: float,
    seconds: float,
    connections: int = 64,
) -> LoadResult:
    """Requests at a fixed rate whatever the answers take (no coordinated omission).

    Each latency runs from the request's scheduled time, so a stalled server shows up as
    the queue it builds, as users would feel it.
    """
    result = LoadResult()
    pool: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection(host, port))

    async def one(n: int, scheduled: float) -> None:
        reader, writer = await pool.get()
        try:
            writer.write(make_request(n))
            status, _ = await _read_response(reader)
        finally:
            pool.put_nowait((reader, writer))
        result.latencies.append(time.perf_counter() - scheduled)
        if status == 200:
            result.completed += 1
        else:
            result.failed += 1

    started = time.perf_counter()
    tasks = []
    total = int(rate * seconds)
    for n in range(total):
        scheduled = started + n / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        tasks.append(asyncio.create_task(one(n, scheduled)))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    while not pool.empty():
        pool.get_nowait()[1].close()
    return result
