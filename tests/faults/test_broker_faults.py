"""The broker refused or black-holed under 50 concurrent mutations: each is told at once.

The API's broker is a loopback proxy to the session's Valkey (job records stay direct), so
the proxy can refuse connections, or accept them and never answer, and then forward again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devtools.valkey import EmbeddedValkey
from tests.conftest import GraphQL, running_api, service_env
from tests.support.ledger import Ledger, scale
from tests.support.proxy import LoopbackProxy

pytestmark = pytest.mark.slow

ENQUEUE = 'mutation { processData(input: {data: "b", delay: 0}) { id } }'
# A black-holed broker is only noticed when the publish timeout runs out. Left alone, a
# socket waits for its own timeout and kombu retries: seconds, not this plus scheduling.
PUBLISH_TIMEOUT = 0.5
SLACK = 2.0  # 50 to 200 answers on a shared, busy two-core machine


@pytest.fixture(scope="module")
def proxy(valkey: EmbeddedValkey) -> Iterator[LoopbackProxy]:
    server = LoopbackProxy(valkey.port).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def proxied_api(proxy: LoopbackProxy, valkey: EmbeddedValkey, data_dir: Path) -> Iterator[GraphQL]:
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_BROKER_URL=f"redis://127.0.0.1:{proxy.port}/0",
        JOBQL_PUBLISH_TIMEOUT=str(PUBLISH_TIMEOUT),
    )
    with running_api(env, data_dir) as api:
        yield api


async def _flood(base: str, count: int) -> list[tuple[float, str]]:
    """``count`` mutations at once: each one's seconds and its error code ('' for none)."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def one() -> tuple[float, str]:
            started = time.monotonic()
            body = (await http.post("/graphql", json={"query": ENQUEUE})).json()
            code = (body.get("errors") or [{}])[0].get("extensions", {}).get("code", "")
            return time.monotonic() - started, code

        async def live() -> float:
            # A client of its own: the flood's pool (100 connections) must not queue it.
            async with httpx.AsyncClient(base_url=base, timeout=30) as probe:
                worst = 0.0
                for _ in range(10):
                    started = time.monotonic()
                    assert (await probe.get("/health/live")).status_code == 200
                    worst = max(worst, time.monotonic() - started)
                    await asyncio.sleep(0.1)
                return worst

        answers, slowest_live = await asyncio.gather(
            asyncio.gather(*(one() for _ in range(count))), live()
        )
        assert slowest_live < 0.5, f"/health/live took {slowest_live:.2f} s under the fault"
        return list(answers)


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
async def test_a_broker_fault_answers_each_mutation_unavailable_fast_and_recovers(
    proxy: LoopbackProxy, proxied_api: GraphQL, fault: str, ledger: Ledger
) -> None:
    count = scale(50, 200)
    before = proxied_api.newest_job_id()
    proxy.set_mode(fault)  # type: ignore[arg-type]
    try:
        answers = await _flood(proxied_api.base_url, count)
    finally:
        proxy.set_mode("forward")

    codes = [code for _, code in answers]
    slowest = max(seconds for seconds, _ in answers)
    assert codes == ["SERVICE_UNAVAILABLE"] * count, codes
    assert slowest < PUBLISH_TIMEOUT + SLACK, f"the slowest answer took {slowest:.2f} s"
    assert proxied_api.newest_job_id() == before, "a job record was left without its message"

    deadline = time.monotonic() + 15
    while True:  # the same API process, no restart
        body = proxied_api.post(ENQUEUE)
        if "errors" not in body:
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
    ledger.submitted = count + 1
    ledger.rejected["SERVICE_UNAVAILABLE"] = count
    ledger.terminal["PENDING (accepted)"] = 1
    ledger.notes.append(f"slowest refusal {slowest:.2f} s (publish timeout {PUBLISH_TIMEOUT} s)")
    ledger.settle()
