"""Operating JobQL: health, workers and queues, metrics, logs and a rolling restart."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kombu.pools
import pytest
from websockets.exceptions import ConnectionClosed

from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import GraphQL, running_api, running_worker, service_env
from tests.support.clients import TRANSPORT_WS, receive, send, websocket

REPORT = "mutation($i: GenerateReportInput!) { generateReport(input: $i) { id } }"
PROCESS = "mutation($i: ProcessDataInput!) { processData(input: $i) { id } }"


def _eventually(check: Any, within: float = 20, every: float = 0.25) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric == name and got == wanted:
            return float(value)
    return 0.0


# -- the session's API and worker --------------------------------------------------------


def test_workers_lists_the_live_worker_with_its_queues(api: GraphQL) -> None:
    workers = api.data(
        "{ workers { name status pool concurrency queues active reserved lastHeartbeat } }"
    )["workers"]
    assert len(workers) == 1
    worker = workers[0]
    assert worker["status"] == "online"
    assert worker["pool"] == "prefork" and worker["concurrency"] == 2
    assert set(worker["queues"]) == {"jobql", "reports", "jobql.webhooks"}
    health = api.data("{ health { ok workers } }")["health"]
    assert health["ok"] and health["workers"] == [worker["name"]]


def test_health_is_cheap_and_ready_names_each_part(api: GraphQL) -> None:
    started = time.monotonic()
    for _ in range(20):
        api.data("{ health { ok } }")
    assert time.monotonic() - started < 2, "health waits on no control ping"
    ready = api.http.get("/health/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok"
    for part in ("broker", "result_backend", "broadcast"):
        assert body[part]["ok"] and body[part]["latency_ms"] >= 0
    assert body["queues"]["jobql"] and body["queues"]["reports"]


def test_queues_count_the_pending_jobs_of_a_paused_queue(api: GraphQL, settings: Settings) -> None:
    name = api.data("{ workers { name } }")["workers"][0]["name"]
    control = create_celery_app(settings, producer=True).control
    control.cancel_consumer("reports", destination=[name], reply=True, timeout=5)
    try:
        ids = [
            api.data(
                "mutation($i: GenerateReportInput!) "
                '{ generateReport(input: $i, options: {queue: "reports"}) { id } }',
                {"i": {"userId": n, "steps": 1, "stepDelay": 0}},
            )["generateReport"]["id"]
            for n in range(3)
        ]

        def paused() -> dict[str, Any] | None:
            queues = {q["name"]: q for q in api.data("{ queues { name pending consumers } }")[
                "queues"]}  # fmt: skip
            reports = queues["reports"]
            return reports if reports["consumers"] == 0 and reports["pending"] == 3 else None

        assert _eventually(paused), api.data("{ queues { name pending consumers workers } }")
        assert api.http.get("/health/ready").status_code == 503, "a queue nobody consumes"
    finally:
        control.add_consumer("reports", destination=[name], reply=True, timeout=5)
    for job_id in ids:
        assert api.wait_done(job_id)["state"] == "SUCCESS"
    assert _eventually(lambda: api.http.get("/health/ready").status_code == 200)


def test_metrics_counters_move_by_exactly_the_jobs_run(api: GraphQL) -> None:
    def scrape() -> str:
        response = api.http.get("/metrics")
        assert response.status_code == 200
        return response.text

    before = scrape()
    ids = [api.data(PROCESS, {"i": {"data": n, "delay": 0}})["processData"]["id"] for n in range(5)]
    for job_id in ids:
        api.wait_done(job_id)

    def moved() -> str | None:
        text = scrape()
        finished = _metric(text, "jobql_jobs_finished_total", task="process_data", state="SUCCESS")
        was = _metric(before, "jobql_jobs_finished_total", task="process_data", state="SUCCESS")
        return text if finished - was == 5 else None

    after = _eventually(moved, within=5)
    assert after, "the workers' counter moves by the five jobs"
    enqueued = _metric(after, "jobql_jobs_enqueued_total", task="process_data")
    assert enqueued - _metric(before, "jobql_jobs_enqueued_total", task="process_data") == 5
    runs = "jobql_job_run_seconds_count"
    assert (
        _metric(after, runs, task="process_data") - _metric(before, runs, task="process_data") == 5
    )
    # Each run lands in its histogram buckets: every bound a run took less than, and +Inf.
    bucket = "jobql_job_run_seconds_bucket"
    for bound in ("60.0", "+Inf"):
        moved_by = _metric(after, bucket, task="process_data", le=bound) - _metric(
            before, bucket, task="process_data", le=bound
        )
        assert moved_by == 5, bound
    waits = "jobql_job_queue_wait_seconds_count"
    assert _metric(after, waits, task="process_data") - _metric(
        before, waits, task="process_data"
    ) == 5  # fmt: skip
    ops = _metric(after, "jobql_graphql_operations_total", operation="anonymous",
                  type="mutation", outcome="ok")  # fmt: skip
    assert ops >= 5
    assert "jobql_subscriptions_active" in after and "jobql_events_delivered_total" in after


# -- a stack of its own: Redis stopped, logs followed, SIGTERM ------------------------------


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedValkey, Path]]:
    data_dir = tmp_path_factory.mktemp("operating")
    server = EmbeddedValkey(data_dir / "valkey").start()
    yield server, data_dir
    server.stop()


def _own_env(own: tuple[EmbeddedValkey, Path], **extra: str) -> tuple[dict[str, str], Settings]:
    server, data_dir = own
    env = service_env(server.url, data_dir, JOBQL_LOG_FORMAT="json",
                      JOBQL_WORKER_HEARTBEAT_INTERVAL="0.5", **extra)  # fmt: skip
    settings = Settings(redis_url=server.url, data_dir=data_dir, extra_queues=("reports",),
                        env="test")  # fmt: skip
    return env, settings


@pytest.mark.slow
def test_ready_goes_503_without_redis_and_200_once_it_is_back(
    own: tuple[EmbeddedValkey, Path],
) -> None:
    env, settings = _own_env(own)
    server, data_dir = own
    with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
        assert _eventually(lambda: api.http.get("/health/ready").status_code == 200)
        server.stop()
        try:
            down = _eventually(lambda: api.http.get("/health/ready").status_code == 503, 10)
            assert down
            body = api.http.get("/health/ready").json()
            assert body["status"] == "unavailable" and not body["result_backend"]["ok"]
        finally:
            server.start()
            # kombu pools producer connections per process: drop this test process's stale
            # ones, or the next worker's start-up ping reads from a closed socket.
            kombu.pools.reset()
        back = _eventually(lambda: api.http.get("/health/ready").status_code == 200, 30)
        assert back, api.http.get("/health/ready").text


def _log_lines(path: Path, job_id: str) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text().splitlines():
        if job_id in raw and raw.startswith("{"):
            lines.append(json.loads(raw))
    return lines


@pytest.mark.slow
def test_the_logs_of_one_job_carry_its_id_from_mutation_to_worker(
    own: tuple[EmbeddedValkey, Path],
) -> None:
    env, settings = _own_env(own)
    _, data_dir = own
    with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
        job_id = api.data(PROCESS, {"i": {"data": "secret-input", "delay": 0}})["processData"]["id"]
        assert api.wait_done(job_id)["state"] == "SUCCESS"
        time.sleep(0.5)
    api_log = data_dir / f"api-{api.base_url.rsplit(':', 1)[1]}.log"
    api_lines = _log_lines(api_log, job_id)
    worker_logs = list(data_dir.glob("worker-*.log"))
    worker_lines = [line for log in worker_logs for line in _log_lines(log, job_id)]
    mutation = next(line for line in api_lines if line["message"].startswith("graphql mutation"))
    assert mutation["job_id"] == job_id and mutation["owner"] == "anonymous"
    assert mutation["request_id"], "the API's lines carry the request id"
    assert "uvicorn.access" not in api_log.read_text(), "one line per operation, no access line"
    states = [line.get("state") for line in worker_lines]
    assert "STARTED" in states and "SUCCESS" in states, worker_lines
    assert all(line["job_id"] == job_id for line in [*api_lines, *worker_lines] if "job_id" in line)
    assert not any("secret-input" in log.read_text() for log in [api_log, *worker_logs])


async def _watch_until_closed(base_url: str, job_id: str, opened: asyncio.Event) -> int | None:
    query = "subscription($id: ID!) { job(id: $id) { id state } }"
    async with websocket(base_url, TRANSPORT_WS.subprotocol) as ws:
        await send(ws, {"type": "connection_init"})
        await receive(ws)
        await send(ws, {"id": "1", "type": "subscribe", "payload": {"query": query,
                        "variables": {"id": job_id}}})  # fmt: skip
        try:
            while True:
                message = await receive(ws)
                if message["type"] == "next":
                    opened.set()
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None


@pytest.mark.slow
async def test_sigterm_closes_subscribers_cleanly_and_loses_no_job(
    own: tuple[EmbeddedValkey, Path],
) -> None:
    env, settings = _own_env(own)
    _, data_dir = own
    with (
        running_worker(env, data_dir, settings, concurrency=1) as worker,
        running_api(env, data_dir) as api,
    ):
        running = api.data(REPORT, {"i": {"userId": 1, "steps": 30, "stepDelay": 0.1}})[
                "generateReport"]["id"]  # fmt: skip
        queued = api.data(REPORT, {"i": {"userId": 2, "steps": 2, "stepDelay": 0.05}})[
                "generateReport"]["id"]  # fmt: skip
        api.wait(running, lambda job: job["state"] == "PROGRESS")
        opened = asyncio.Event()
        watcher = asyncio.create_task(_watch_until_closed(api.base_url, running, opened))
        await asyncio.wait_for(opened.wait(), 10)
        assert api.process is not None
        api.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(watcher, 10)
        assert code == 1001, "the subscriber is told the server is going away"
        api.process.wait(15)
        worker.send_signal(signal.SIGTERM)  # warm shutdown while `running` runs
        worker.wait(60)
    # A new API and worker, as after a rolling restart: both jobs end in SUCCESS.
    with running_worker(env, data_dir, settings), running_api(env, data_dir) as api:
        assert api.wait_done(running, timeout=60)["state"] == "SUCCESS"
        assert api.wait_done(queued, timeout=60)["state"] == "SUCCESS"


def test_a_request_id_is_echoed(api: GraphQL) -> None:
    response = httpx.post(f"{api.base_url}/graphql", json={"query": "{ tasks { name } }"},
                          headers={"X-Request-ID": "trace-17"})  # fmt: skip
    assert response.headers["x-request-id"] == "trace-17"
