"""What a trivial job's writes cost, alone, in one process: no pool, no broker, no API.

P10 runs the whole worker on a machine it shares with Valkey, and its jobs/s move with
whatever else runs there. This measures the two writes JobQL's worker adds per job, in
CPU time (this process's and Valkey's), which other load moves far less:

- the record's: ``events.started`` then ``events.succeeded``, for jobs of an owner whose
  earlier job this process already ran (as a worker's next job is); then the same with the
  job's run lease taken before and released after (``tasks.core.run_lease``);
- Celery's result store of the outcome (``mark_as_done``), with the fast paths on and off;
- a whole job's, as the worker's tracer makes them: the start, Celery's store of the
  success (with the request the task ran in), then ``on_success``'s record of it unless
  the store recorded it already.

    .venv/bin/python -m bench.worker_writes --jobs 3000

To compare with another checkout, copy this file into its ``bench/`` and run it there.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery.app.task import Context

from devtools.valkey import EmbeddedValkey


def _valkey_cpu(client: redis.Redis) -> float:
    stats = client.info("cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


def _commands(client: redis.Redis) -> int:
    return sum(int(entry["calls"]) for entry in client.info("commandstats").values())


def measure(client: redis.Redis, jobs: list[str], write: Callable[[str], None]) -> str:
    """Per job: this process's CPU µs, Valkey's CPU µs, and Valkey's commands."""
    calls, valkey, cpu = _commands(client), _valkey_cpu(client), time.process_time()
    for job_id in jobs:
        write(job_id)
    cpu, valkey = time.process_time() - cpu, _valkey_cpu(client) - valkey
    calls = _commands(client) - calls - 2  # the two INFO calls of this measure
    n = len(jobs)
    return (
        f"python {1e6 * cpu / n:6.1f} us, valkey {1e6 * valkey / n:6.1f} us, "
        f"{calls / n:4.1f} commands per job"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="jobql-writes-"))
    valkey = EmbeddedValkey(data / "valkey", persist=False)
    valkey.start()
    os.environ["JOBQL_REDIS_URL"] = valkey.url  # this process as a worker process
    try:
        from tasks.core import events, records, run_lease
        from tasks.core.settings import Settings
        from tests.support.apps import worker_app

        client = redis.Redis.from_url(valkey.url)
        task = "bench.trivial"

        def queued() -> str:
            fields = records.new_record(
                job_id=str(uuid.uuid4()),
                task=task,
                owner="bench",
                queue="bench",
                input_json={"n": 1},
                created_at=records.now(),
            )
            events.create(fields)
            return fields["id"]

        def run(job_id: str) -> None:
            events.started(job_id, task, 0, {"n": 1}, "bench", "worker@host")
            events.succeeded(job_id, task, {"n": 1})

        run(queued())  # the worker has run one job of the owner's: connected, scripts loaded
        jobs = [queued() for _ in range(args.jobs)]
        print(f"record writes (STARTED, SUCCESS): {measure(client, jobs, run)}")
        records_client = events.client()

        def leased(job_id: str) -> None:  # JobTask.before_start's lease, the postrun's release
            run_lease.take(records_client, job_id)
            run(job_id)
            run_lease.release(records_client, job_id)

        jobs = [queued() for _ in range(args.jobs)]
        print(f"the same with the run lease (taken, released): {measure(client, jobs, leased)}")
        for fast in (True, False):
            settings = Settings(redis_url=valkey.url, fast_paths=fast)
            app = worker_app(settings)  # as a starting worker configures it
            store = functools.partial(app.backend.mark_as_done, result={"n": 1})
            store(str(uuid.uuid4()))
            line = measure(client, [str(uuid.uuid4()) for _ in range(args.jobs)], store)
            print(f"Celery result store, fast paths {'on ' if fast else 'off'}: {line}")
            app.close()
        for fast in (True, False):
            settings = Settings(redis_url=valkey.url, fast_paths=fast)
            app = worker_app(settings)

            def job(job_id: str, backend: Any = app.backend) -> None:
                events.started(job_id, task, 0, {"n": 1}, "bench", "worker@host")
                request = Context(id=job_id, task=task, jobql_result_json='{"n":1}')
                backend.mark_as_done(job_id, {"n": 1}, request=request)
                events.succeeded(job_id, task, {"n": 1}, '{"n":1}')  # JobTask.on_success

            job(queued())
            line = measure(client, [queued() for _ in range(args.jobs)], job)
            print(f"whole job's writes, fast paths {'on ' if fast else 'off'}: {line}")
            app.close()
        print(f"tasks from {Path(events.__file__).parent.parent}")
    finally:
        valkey.stop()


if __name__ == "__main__":
    main()
