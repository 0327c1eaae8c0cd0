"""`make run` as the README has a newcomer type it, driven from outside.

:class:`MakeRun` starts the README's own command (``make run``, ``PORT`` on a free port) in
a process group of its own, like a terminal's foreground job, and finds what it started by
the pid file the runner writes (``<data dir>/run.json``), not by what ``ps`` prints.
``tests/faults/test_run.py`` drives it; CI runs this module after the tests
(``python -m tests.newcomer``), on its clean clone with nothing set by hand: the README
tour's first mutation over HTTP, its subscription to SUCCESS over graphql-transport-ws,
one Ctrl-C, and every process gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from devtools.processes import free_port
from tests.support.clients import graphql_transport_ws

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("valkey", "worker", "beat", "api")
# The README tour's first mutation, with fewer and shorter steps.
TOUR_MUTATION = """mutation {
  generateReport(input: { userId: 42, steps: 5, stepDelay: 0.1 }) { id state sequence }
}"""
TOUR_SUBSCRIPTION = """subscription($id: ID!) {
  job(id: $id) { state sequence progress { percent message } result }
}"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for every purpose here.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class MakeRun:
    """One ``make run``, with the environment a newcomer's shell would give it."""

    def __init__(
        self, data_dir: Path, env: dict[str, str] | None = None, *, as_readme: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.as_readme = as_readme
        self.port = free_port()
        self.env = env if env is not None else dict(os.environ)
        self.log_path = data_dir / "make-run.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MakeRun:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = ["make", "--no-print-directory", "run", f"PORT={self.port}"]
        if not self.as_readme:
            # The environment running the tests, as it is: `make`'s sync must not change it
            # under them (make test-latest's newer packages, another PYTHON's .venv).
            command += [f"VENV={sys.prefix}", f"PYTHON={sys.executable}", "NO_SYNC=1"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the terminal's foreground job
            )  # fmt: skip
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pids(self) -> dict[str, int]:
        """What the runner says it runs now (rewritten on every restart)."""
        try:
            written = json.loads((self.data_dir / "run.json").read_text())
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in written.items() if k != "port"}

    def wait_ready(self, within: float = 120) -> dict[str, int]:
        """Until /health/ready answers 200; then the pids of everything it started."""
        assert self.process is not None
        deadline = time.monotonic() + within
        last = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"make run exited with {self.process.returncode}:\n"
                                     f"{self.log()[-4000:]}")  # fmt: skip
            try:
                response = httpx.get(f"{self.base_url}/health/ready", timeout=2)
                last = f"{response.status_code} {response.text[:300]}"
                if response.status_code == 200 and self.pids():
                    return self.pids()
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise AssertionError(f"not ready after {within} s ({last}):\n{self.log()[-4000:]}")

    def interrupt(self) -> None:
        """What one Ctrl-C in the terminal sends: SIGINT to the whole foreground group."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)

    def wait_stopped(self, pids: dict[str, int], within: float) -> float:
        """Seconds until make and every process it started are gone; fails past ``within``."""
        assert self.process is not None
        started = time.monotonic()
        try:
            self.process.wait(within)
        except subprocess.TimeoutExpired:
            left = {name: pid for name, pid in pids.items() if alive(pid)}
            raise AssertionError(
                f"make still running {within} s after Ctrl-C, with {left}:\n{self.log()[-6000:]}"
            ) from None
        while time.monotonic() - started < within:
            left = {name: pid for name, pid in pids.items() if alive(pid)}
            if not left:
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"still running {within} s after Ctrl-C: {left}\n{self.log()[-6000:]}")

    def kill(self) -> None:
        """The test's own clean-up: whatever is left, gone."""
        pids = self.pids()
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def tour(run: MakeRun) -> dict[str, Any]:
    """The README tour's first mutation, and its subscription until the job is done."""
    with httpx.Client(base_url=run.base_url, timeout=30) as http:
        body = http.post("/graphql", json={"query": TOUR_MUTATION}).json()
    assert "errors" not in body, body
    job_id = body["data"]["generateReport"]["id"]
    stream = asyncio.run(graphql_transport_ws(run.base_url, TOUR_SUBSCRIPTION, {"id": job_id}))
    assert stream.completed and not stream.errors, stream
    assert stream.jobs[-1]["state"] == "SUCCESS", stream.jobs
    return {"id": job_id, "states": [job["state"] for job in stream.jobs]}


def main() -> int:
    """The newcomer's path, printed step by step (CI runs it after the tests)."""
    data_dir = ROOT / "var"
    run = MakeRun(data_dir, as_readme=True)
    began = time.monotonic()
    print(f"newcomer: make run PORT={run.port}", flush=True)  # noqa: T201
    run.start()
    try:
        pids = run.wait_ready()
        print(f"newcomer: ready in {time.monotonic() - began:.1f} s: {pids}", flush=True)  # noqa: T201
        seen = tour(run)
        print(f"newcomer: tour job {seen['id']}: {' -> '.join(seen['states'])}", flush=True)  # noqa: T201
        run.interrupt()
        took = run.wait_stopped(pids, within=60)
        print(f"newcomer: one Ctrl-C stopped make and {sorted(pids)} in {took:.1f} s", flush=True)  # noqa: T201
    except BaseException:
        print(run.log()[-6000:], file=sys.stderr)  # noqa: T201
        raise
    finally:
        run.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
