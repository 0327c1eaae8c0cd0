"""``make run``: Valkey (when no Redis is configured), a Celery worker and the API, together.

One Ctrl-C, or SIGTERM to the process group, stops all of it: the API and the worker first
(the worker finishes or requeues its jobs), the embedded Valkey last, so nothing is cut off.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import time
from types import FrameType

from devtools.processes import api_command, stop_all, wait_for_port, worker_command
from devtools.valkey import EmbeddedValkey
from tasks.settings import get_settings

logger = logging.getLogger("jobql.run")


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
        subprocess.Popen(worker_command(), env=env),
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
