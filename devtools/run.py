"""``make run``: Valkey (when no Redis is configured), a Celery worker, beat and the API.

One Ctrl-C, or SIGTERM to the process group, stops all of it: the API and the worker first
(the worker finishes or requeues its jobs), the embedded Valkey last, so nothing is cut off.
A worker or beat that exits by itself (a crash, an out-of-memory kill) is started again
after a back-off that doubles while it keeps failing; the API and Valkey stay up meanwhile.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import time
from types import FrameType

from devtools.processes import api_command, beat_command, stop_all, wait_for_port, worker_command
from devtools.valkey import EmbeddedValkey
from tasks.settings import get_settings

logger = logging.getLogger("jobql.run")


class Keeper:
    """A development process (the worker, beat), started again whenever it exits by itself.

    The back-off starts at ``first`` seconds and doubles up to ``longest`` while the process
    keeps dying within ``steady`` seconds of its start; one that ran longer than that
    starts again at once.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        first: float = 1.0,
        longest: float = 30.0,
        steady: float = 60.0,
    ) -> None:
        self.name, self.command, self.env = name, command, env
        self.first, self.longest, self.steady = first, longest, steady
        self.backoff = 0.0
        self.restart_at: float | None = None
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.started = time.monotonic()
        return subprocess.Popen(self.command, env=self.env)

    def keep_alive(self) -> None:
        """Called often: notice an exit, wait out the back-off, start it again."""
        now = time.monotonic()
        if self.restart_at is None:
            code = self.process.poll()
            if code is None:
                return
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
        if now >= self.restart_at:
            self.restart_at = None
            self.process = self._start()
            logger.info("%s restarted (pid %d)", self.name, self.process.pid)


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
    kept = [Keeper("worker", worker_command(), env), Keeper("beat", beat_command(), env)]
    api = subprocess.Popen(api_command(args.host, args.port), env=env)
    children = [*(keeper.process for keeper in kept), api]
    try:
        wait_for_port(args.port, 30.0, api)
        logger.info("JobQL is up: GraphiQL at http://%s:%d/graphql", args.host, args.port)
        while not stopping and api.poll() is None:
            time.sleep(0.2)
            if not stopping:  # a Ctrl-C reaches the worker too: that exit is no crash
                for index, keeper in enumerate(kept):
                    keeper.keep_alive()
                    children[index] = keeper.process
    finally:
        logger.info("stopping JobQL")
        stop_all(children)
        if valkey is not None:
            valkey.stop()
    failed = [child for child in children if child.returncode not in (0, -signal.SIGTERM)]
    return 1 if failed and not stopping else 0


if __name__ == "__main__":
    raise SystemExit(main())
