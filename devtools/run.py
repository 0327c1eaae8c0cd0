"""``make run`` (``jobql dev``): Valkey when no Redis is configured, a Celery worker, beat and
the API, each started again after a doubling back-off when it exits by itself, so one crash does
not end a developer's session. One Ctrl-C (or SIGTERM) stops them in an order that cuts nothing
off: the API and beat, the worker after a warm shutdown, the embedded Valkey last; a second
Ctrl-C cuts the running jobs, which the next start puts back on the queue. ``<data dir>/dev.env``
and ``<data dir>/run.json`` tell ``jobql check``, the tests and a shell where things are.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from devtools.processes import api_command, beat_command, wait_for_port, worker_command
from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings, get_settings

logger = logging.getLogger("jobql.run")

# What the worker's warm shutdown may take beyond the hard time limit of its longest job.
WORKER_STOP_MARGIN = 15.0


class Keeper:
    """A development process, started again whenever it exits by itself.

    The back-off starts at ``first`` seconds and doubles up to ``longest`` while the process
    keeps dying within ``steady`` seconds of its start; one that ran longer than that
    starts again at once.
    """

    def __init__(
        self,
        name: str,
        start: Callable[[], subprocess.Popen[bytes]],
        first: float = 1.0,
        longest: float = 30.0,
        steady: float = 60.0,
    ) -> None:
        self.name, self.start = name, start
        self.first, self.longest, self.steady = first, longest, steady
        self.backoff = 0.0
        self.restart_at: float | None = None
        self.started = time.monotonic()
        self.process = start()

    def keep_alive(self) -> bool:
        """Called often: notice an exit, wait out the back-off, start it again.

        True when a new process was started.
        """
        now = time.monotonic()
        if self.restart_at is None:
            code = self.process.poll()
            if code is None:
                return False
            ran = now - self.started
            self.backoff = (
                0.0 if ran > self.steady else min(self.longest, max(self.first, self.backoff * 2))
            )
            self.restart_at = now + self.backoff
            logger.warning(
                "the %s exited with %s after %.1f s; restarting it in %.1f s",
                self.name,
                code,
                ran,
                self.backoff,
            )
        if now < self.restart_at:
            return False
        self.restart_at = None
        self.started = now
        try:
            self.process = self.start()
        except Exception as exc:  # e.g. a Valkey that cannot bind its port yet: try again
            self.backoff = min(self.longest, max(self.first, self.backoff * 2))
            self.restart_at = now + self.backoff
            logger.warning(
                "the %s did not start (%s); trying again in %.1f s", self.name, exc, self.backoff
            )
            return False
        logger.info("%s restarted (pid %d)", self.name, self.process.pid)
        return True


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)


def _wait(process: subprocess.Popen[bytes], until: float) -> bool:
    try:
        process.wait(max(0.0, until - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


class Runner:
    """The four processes of ``make run`` and the files that say where they are."""

    def __init__(self, settings: Settings, host: str, port: int) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.env = dict(os.environ)
        self.data_dir = settings.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.valkey: EmbeddedValkey | None = None
        self.keepers: list[Keeper] = []

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "run.json"

    @property
    def env_file(self) -> Path:
        return self.data_dir / "dev.env"

    def start(self) -> None:
        if not self.settings.redis_url:
            valkey = self.valkey = EmbeddedValkey(self.data_dir / "valkey")

            def start_valkey() -> subprocess.Popen[bytes]:
                valkey.start()
                assert valkey.process is not None
                return valkey.process

            self.keepers.append(Keeper("valkey", start_valkey))
            self.env["JOBQL_REDIS_URL"] = valkey.url
            self.env_file.write_text(
                "# Written by `make run` while it runs: its embedded Valkey.\n"
                f"JOBQL_REDIS_URL={valkey.url}\n"
            )
            logger.info("embedded Valkey on %s (data in %s)", valkey.url, valkey.data_dir)
        self.keepers += [
            Keeper("worker", self._popen(worker_command())),
            Keeper("beat", self._popen(beat_command())),
            Keeper("api", self._popen(api_command(self.host, self.port))),
        ]

    def _popen(self, command: list[str]) -> Callable[[], subprocess.Popen[bytes]]:
        return lambda: subprocess.Popen(command, env=self.env)

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(keeper.process for keeper in self.keepers if keeper.name == name)

    def write_pids(self) -> None:
        pids = {keeper.name: keeper.process.pid for keeper in self.keepers}
        temporary = self.pid_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"runner": os.getpid(), "port": self.port, **pids}))
        temporary.replace(self.pid_file)

    def keep_alive(self) -> None:
        if any([keeper.keep_alive() for keeper in self.keepers]):
            self.write_pids()

    def stop(self, cut: Callable[[], bool]) -> None:
        """API and beat first, the worker after its warm shutdown, Valkey last.

        ``cut()`` turns true when the user asks for a second time: the worker's running jobs
        are then cut short (cold shutdown) and re-queued at the next start.
        """
        grace = self.settings.shutdown_grace_seconds
        running = {keeper.name: keeper.process for keeper in self.keepers}
        others = [running[name] for name in ("api", "beat") if name in running]
        for process in running.values():
            if process is not running.get("valkey"):
                _stop(process)
        now = time.monotonic()
        for process in others:
            if not _wait(process, now + grace + 5):
                _kill(process)
        worker = running.get("worker")
        worker_deadline = now + self.settings.task_time_limit + WORKER_STOP_MARGIN
        told = False
        while worker is not None and not _wait(
            worker, min(worker_deadline, time.monotonic() + 0.2)
        ):
            if time.monotonic() >= worker_deadline:
                logger.warning("the worker outlived the task time limit: killing it")
                break
            if cut():
                logger.warning("cutting the running jobs: they go back on the queue next start")
                _stop(worker, signal.SIGQUIT)  # Celery's cold shutdown
                _wait(worker, time.monotonic() + 5)
                break
            if not told and time.monotonic() - now > 2:
                told = True
                logger.info(
                    "waiting for the worker's running jobs to finish (up to %.0f s); "
                    "Ctrl-C again cuts them",
                    self.settings.task_time_limit,
                )
        if worker is not None:
            _kill(worker)
        if self.valkey is not None:
            self.valkey.stop()
        for keeper in self.keepers:
            _kill(keeper.process)
        self.pid_file.unlink(missing_ok=True)
        self.env_file.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    asked = 0

    def request_stop(signum: int, _: FrameType | None) -> None:
        nonlocal asked
        asked += 1

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    runner = Runner(get_settings(), args.host, args.port)
    try:
        runner.start()
        # An API that cannot start (the port is taken, a setting is refused) ends the run.
        wait_for_port(args.port, 60.0, runner.process("api"))
        # Written once all is up: from here on, whatever exits is started again.
        runner.write_pids()
        logger.info("JobQL is up: GraphiQL at http://%s:%d/graphql", args.host, args.port)
        while not asked:
            time.sleep(0.2)
            if not asked:  # a Ctrl-C reaches every child too: those exits are no crash
                runner.keep_alive()
    finally:
        logger.info("stopping JobQL")
        runner.stop(cut=lambda: asked > 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
