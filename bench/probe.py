"""A health probe in a process of its own, so what it times is the server, not a load
generator's busy event loop shared with the probe.

    .venv/bin/python -m bench.probe PORT   # prints "ready", probes until a line on stdin,
                                           # then prints the latencies (s) as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import uvloop

from bench.httpload import _read_response


async def probe(port: int, interval: float = 0.01) -> list[float]:
    """``GET /health/live`` every ``interval`` on one keep-alive connection until told."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("ready", flush=True)
    samples: list[float] = []
    while not stop.done():
        started = time.perf_counter()
        writer.write(request)
        await _read_response(reader)
        samples.append(time.perf_counter() - started)
        await asyncio.sleep(interval)
    writer.close()
    return samples


if __name__ == "__main__":
    print(json.dumps(uvloop.run(probe(int(sys.argv[1])))), flush=True)
