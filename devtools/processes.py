"""Start, wait for and stop JobQL's processes: the commands production runs, and ports."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once something listens on ``port``; fail early if ``process`` exits first."""
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


def worker_command(queues: tuple[str, ...] = (), concurrency: int | None = None) -> list[str]:
    """A Celery worker; without ``queues`` it consumes every queue the settings configure."""
    command = [sys.executable, "-m", "gql.cli", "worker"]  # `jobql worker`
    if queues:
        command += ["--queues", ",".join(queues)]
    if concurrency:
        command += ["--concurrency", str(concurrency)]
    return command


def beat_command() -> list[str]:
    """`jobql beat`: Celery beat running the periodic schedules stored in Redis."""
    return [sys.executable, "-m", "gql.cli", "beat"]


def api_command(host: str, port: int, workers: int = 1) -> list[str]:
    """`jobql api`: uvicorn with JobQL's protocol, grace period and metrics directory."""
    return [
        sys.executable, "-m", "gql.cli", "api",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = 20.0) -> None:
    """SIGTERM to all at once (each shuts down gracefully), SIGKILL what outlives ``timeout``."""
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
