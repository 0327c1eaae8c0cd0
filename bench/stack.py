"""What every benchmark starts: an embedded Valkey and JobQL processes, torn down after."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devtools.processes import api_command, free_port, stop_all, wait_for_port, worker_command
from devtools.valkey import EmbeddedValkey

ROOT = Path(__file__).resolve().parent.parent
# A folder here makes py-spy record every JobQL process a bench starts (bench.profile).
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, every thread), in nanoseconds' resolution.

    Read from the kernel's CPU clock of that process (Linux), not /proc/<pid>/stat: that
    counts in ticks of 10 ms, coarser than a short figure's whole window.
    """
    process_cpu_clock = ((~pid) << 3) | 2  # the kernel's MAKE_PROCESS_CPUCLOCK(pid, SCHED)
    return time.clock_gettime(process_cpu_clock)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclass
class Stack:
    valkey: EmbeddedValkey
    api: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]  # what the stack's processes were started with
    data: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_worker(
    stack: Stack, command: list[str], log_name: str = "extra-worker.log"
) -> subprocess.Popen[bytes]:
    """One more worker for a figure that times the worker itself; the caller stops it."""
    with (stack.data / log_name).open("ab") as log:
        started = subprocess.Popen(command, env=stack.env, cwd=ROOT, stdout=log, stderr=log)
    if PROFILE_DIR:
        time.sleep(2)  # past `jobql worker`'s exec of the real worker
        profiled(started, log_name.removesuffix(".log"))
    return started


def profiled(process: subprocess.Popen[bytes], name: str) -> None:
    """With ``BENCH_PROFILE_DIR`` set, py-spy samples ``process`` (and its pool children)
    until it exits, into ``<dir>/<name>-<pid>.raw``; ``python -m bench.profile`` reads it."""
    if not PROFILE_DIR:
        return
    out = Path(PROFILE_DIR) / f"{name}-{process.pid}.raw"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    subprocess.Popen(
        [str(py_spy), "record", "--pid", str(process.pid), "--subprocesses", "--rate", "250",
         "--format", "raw", "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


@contextmanager
def running_stack(
    *,
    worker: bool,
    task_modules: str = '["tasks.examples"]',
    queues: tuple[str, ...] = ("jobql",),
    settings: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Valkey, one API process (uvicorn, no access log) and optionally a worker.

    ``settings`` are extra ``JOBQL_`` variables for both, e.g. to compare a tuning knob.
    """
    data = Path(tempfile.mkdtemp(prefix="jobql-bench-"))
    # No snapshots: a background save forking mid-figure was measured as latency.
    valkey = EmbeddedValkey(data / "valkey", persist=False).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_")}
    env.update(
        JOBQL_REDIS_URL=valkey.url,
        JOBQL_DATA_DIR=str(data),
        JOBQL_TASK_MODULES=task_modules,
        PYTHONPATH=str(ROOT),
    )
    env.update(settings or {})
    port = free_port()
    processes: list[subprocess.Popen[bytes]] = []
    with (data / "api.log").open("wb") as api_log, (data / "worker.log").open("wb") as w_log:
        api = subprocess.Popen(
            [*api_command("127.0.0.1", port), "--no-access-log"],
            env=env,
            cwd=ROOT,
            stdout=api_log,
            stderr=api_log,
        )
        processes.append(api)
        if worker:
            processes.append(
                subprocess.Popen(
                    worker_command(queues, concurrency=2),
                    env=env,
                    cwd=ROOT,
                    stdout=w_log,
                    stderr=w_log,
                )
            )
    try:
        wait_for_port(port, 30, api)
        # Once serving: `jobql api` / `jobql worker` exec the real process first.
        for process, name in zip(processes, ("api", "worker"), strict=False):
            profiled(process, name)
        yield Stack(valkey, api, port, env, data)
    finally:
        stop_all(processes)
        valkey.stop()
        shutil.rmtree(data, ignore_errors=True)
