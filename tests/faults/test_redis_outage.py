"""Redis killed and restarted while a job runs and is watched: the job still ends in its true state.

A Valkey of this module's own (with its append-only file, as the embedded default has), its
own worker and API: killing it does not disturb the session's services.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import kombu.pools
import pytest

from devtools.valkey import EmbeddedValkey
from tasks.core.settings import Settings
from tests.conftest import AsyncGraphQL, running_api, running_worker, service_env
from tests.support.clients import graphql_transport_ws
from tests.support.ledger import FULL, Ledger

pytestmark = pytest.mark.slow

# Two jobs: one reports progress all along, one is silent until its end; both end while
# Redis is down, so their final state is written once it is back.
REPORT = "mutation { generateReport(input: {userId: 7, steps: 30, stepDelay: 0.1}) { id } }"
SILENT = 'mutation { processData(input: {data: "x", delay: 3}) { id } }'
ATTEMPTS = "query($id: ID!) { job(id: $id) { attempts } }"
WATCH = "subscription($id: ID!) { job(id: $id) { state done sequence attempts } }"


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedValkey, Path]]:
    data_dir = tmp_path_factory.mktemp("outage")
    server = EmbeddedValkey(data_dir / "valkey").start()
    yield server, data_dir
    server.stop()


def _crash(server: EmbeddedValkey) -> None:
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait()
    server.process = None


@pytest.mark.parametrize("outage", [3.0, 10.0, 25.0] if FULL else [3.0, 10.0])
async def test_a_redis_crash_mid_job_within_the_tolerance_does_not_fail_it(
    own: tuple[EmbeddedValkey, Path], outage: float, ledger: Ledger
) -> None:
    server, data_dir = own
    env = service_env(server.url, data_dir)
    settings = Settings(redis_url=server.url, data_dir=data_dir, env="test")
    with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
        async with AsyncGraphQL(api.base_url) as client:
            ids = [
                (await client.data(REPORT))["generateReport"]["id"],
                (await client.data(SILENT))["processData"]["id"],
            ]
            watches = [
                asyncio.create_task(
                    graphql_transport_ws(api.base_url, WATCH, {"id": job_id}, within=120)
                )
                for job_id in ids
            ]
            for job_id in ids:
                await client.wait(job_id, lambda j: j["state"] in ("STARTED", "PROGRESS"), 30)
            await asyncio.sleep(1.2)  # the append-only file has the jobs' starts

            _crash(server)
            await asyncio.sleep(outage)
            server.start()
            kombu.pools.reset()

            done = [await client.wait_done(job_id, 90) for job_id in ids]
            streams = [await asyncio.wait_for(watch, 90) for watch in watches]
            attempts = [
                (await client.data(ATTEMPTS, {"id": job_id}))["job"]["attempts"] for job_id in ids
            ]

    assert [job["state"] for job in done] == ["SUCCESS", "SUCCESS"], done
    assert attempts == [1, 1], "no job ran twice"
    for stream in streams:
        assert stream.completed and stream.jobs[-1]["state"] == "SUCCESS", stream.results[-3:]
    ledger.submitted = len(ids)
    ledger.terminal.update(job["state"] for job in done)
    ledger.subscribers = len(streams)
    ledger.subscribers_ended = sum(
        s.completed and s.jobs[-1]["state"] == "SUCCESS" for s in streams
    )
    ledger.settle()
