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
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
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
