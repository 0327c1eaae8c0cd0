"""Redis memory of one finished job's record, by the kind of run: ``MEMORY USAGE`` of its keys
and Valkey's ``used_memory`` growth per job, on an embedded Valkey of its own. The records are
written by the worker's own writer (:mod:`tasks.core.events`), as a run writes them; Celery's
result entry is not counted (P10's figure adds it).

    .venv/bin/python -m bench.record_bytes --jobs 2000
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import redis

from devtools.valkey import EmbeddedValkey

WORKER = "celery@jobql-worker-1"  # a name as long as a container's


def _kinds() -> dict[str, Callable[[str], None]]:
    from tasks.core import events

    # What a retry records of its error, where the writer takes it (not before the timeline).
    with_error = "exception" in inspect.signature(events.retrying).parameters

    def plain(job: str) -> None:
        events.started(job, "bench.noop", 0, {}, "bench", WORKER)
        events.succeeded(job, "bench.noop", {"ok": True})

    def progress(job: str) -> None:
        events.started(job, "bench.noop", 0, {}, "bench", WORKER)
        for step in range(1, 11):
            events.progressed(job, "bench.noop", {"current": step, "total": 10})
        events.succeeded(job, "bench.noop", {"ok": True})

    def retried(job: str) -> None:
        events.started(job, "bench.noop", 0, {}, "bench", WORKER)
        error = ConnectionError("mail server busy")
        events.retrying(job, "bench.noop", 1, *([error] if with_error else []))
        events.started(job, "bench.noop", 1, {}, "bench", WORKER)
        events.succeeded(job, "bench.noop", {"ok": True})

    kinds: dict[str, Callable[[str], None]] = {
        "plain": plain,
        "10 progress reports": progress,
        "retried once": retried,
    }
    if hasattr(events, "logged"):

        def logged(job: str) -> None:
            events.started(job, "bench.noop", 0, {}, "bench", WORKER)
            for line in range(5):
                events.logged(job, f"imported batch {line} of 5", 20)
            events.succeeded(job, "bench.noop", {"ok": True})

        kinds["5 log lines"] = logged
    return kinds


def measure(client: redis.Redis, jobs: int) -> dict[str, dict[str, float]]:
    from tasks.core import events, records

    out = {}
    for name, run in _kinds().items():
        gc.collect()
        before = int(client.info("memory")["used_memory"])
        ids = []
        for _ in range(jobs):
            fields = records.new_record(
                job_id=str(uuid.uuid4()),
                task="bench.noop",
                owner="anonymous",
                queue="bench",
                input_json={},
                created_at=records.now(),
            )
            events.create(fields)
            run(fields["id"])
            ids.append(fields["id"])
        used = int(client.info("memory")["used_memory"]) - before
        sample = records.job_key(ids[len(ids) // 2])
        keys = [sample, sample + ":logs"]
        out[name] = {
            "record_bytes": float(client.memory_usage(sample) or 0),
            "keys_bytes": float(sum(client.memory_usage(key) or 0 for key in keys)),
            "used_memory_per_job": used / jobs,
            "encoding": client.object("encoding", sample),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        server = EmbeddedValkey(Path(folder), persist=False).start()
        try:
            os.environ["JOBQL_REDIS_URL"] = server.url
            client = redis.Redis.from_url(server.url, decode_responses=True)
            print(json.dumps(measure(client, args.jobs), indent=2))
            client.close()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
