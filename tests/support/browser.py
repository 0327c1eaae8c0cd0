"""Headless Chromium for the tests, driven over the DevTools protocol (no driver needed),
with the network closed: every host but 127.0.0.1 resolves nowhere and every proxied
request goes to a closed port."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

CLOSED_NETWORK = (
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",  # loopback bypasses it; anything else is refused
)


def chromium() -> str:
    """Debian's ``chromium``: installed with apt-get where missing (as root), else skipped."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and apt-get cannot be run here (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode:
            pytest.skip("chromium could not be installed with apt-get (no package source?)")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed no chromium binary")
    return found


class Page:
    """One tab: commands in, events recorded."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            if "id" in message and message["id"] in self._waiting:
                self._waiting.pop(message["id"]).set_result(message)
            else:
                self.events.append(message)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self._ids)
        self._waiting[number] = asyncio.get_running_loop().create_future()
        await self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        answer = await asyncio.wait_for(self._waiting[number], 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer["result"]
        return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"{expression[:80]}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, within: float = 30) -> Any:
        """The expression's value once it is truthy."""
        deadline = time.monotonic() + within
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self) -> bytes:
        """The tab as it looks now, as PNG."""
        shot = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.socket.close()


def _start(profile: Path, size: tuple[int, int]) -> tuple[subprocess.Popen[bytes], str]:
    """Chromium started, and the DevTools port it chose."""
    process = subprocess.Popen(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",  # tests run as root in a container
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            f"--window-size={size[0]},{size[1]}",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            *CLOSED_NETWORK,
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("chromium did not open its DevTools port")
        time.sleep(0.1)
    return process, port_file.read_text().split()[0]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def browser_page(profile: Path, size: tuple[int, int] = (1400, 900)) -> AsyncIterator[Page]:
    """A headless Chromium with the network closed, and its one tab."""
    process, port = await asyncio.to_thread(_start, profile, size)
    try:
        async with httpx.AsyncClient() as http:
            targets = (await http.get(f"http://127.0.0.1:{port}/json/list")).json()
        tab = next(t for t in targets if t["type"] == "page")
        socket = await connect(tab["webSocketDebuggerUrl"], max_size=None)
        page = Page(socket)
        try:
            for domain in ("Page", "Runtime", "Network", "Log"):
                await page.send(f"{domain}.enable")
            yield page
        finally:
            await page.close()
    finally:
        await asyncio.to_thread(_stop, process)
