"""A worker's RabbitMQ connection cut mid-job: the job must not run a second time meanwhile.

Issue 29, item 3a (as celery/celery#4671). Jobs are acknowledged late, so when a worker's AMQP
connection breaks while a job runs, RabbitMQ puts the job's unacknowledged message back on its
queue at once, and the reconnected worker (or any other) receives it again while the first run
still executes. The Redis transport's fix (``tasks.worker.broker``) cannot apply: RabbitMQ, not
the worker, requeues the message, and an AMQP delivery cannot be acknowledged from another
connection. The fence is the job's run lease (``tasks.core.run_lease``): the second delivery
finds the first run's lease and waits its turn, then finds the job finished and is dropped.

A stack of this module's own: Valkey for the records, a RabbitMQ virtual host, a worker with
two pool processes whose broker connections go through a loopback proxy (cut, then healed),
and the API, which publishes to RabbitMQ directly. Skipped, with the reason, where no RabbitMQ
is reachable.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from kombu import Connection

from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import GraphQL, running_api, running_worker, service_env
from tests.support.ledger import Ledger
from tests.support.native_tasks import EFFECTS_KEY, RUNS_KEY, SPANS_KEY
from tests.support.proxy import LoopbackProxy
from tests.support.servers import rabbitmq_unavailable, rabbitmq_vhost

pytestmark = [
    pytest.mark.slow,
    pytest.mark.rabbitmq,
    pytest.mark.skipif(
        rabbitmq_unavailable() is not None,
        reason=f"{rabbitmq_unavailable()}; the AMQP reconnect mid-job is not tried",
    ),
    # Half a minute of one worker: once per make test, in its RabbitMQ pass, not again in
    # the main pass (which runs every test against Redis).
    pytest.mark.skipif(
        os.environ.get("JOBQL_TEST_BROKER") != "rabbitmq",
        reason="runs in make test's RabbitMQ pass (JOBQL_TEST_BROKER=rabbitmq)",
    ),
]

QUEUE = "jobql"
WORKER = "amqp-reconnect-worker"
ENQUEUE = """mutation($i: JSON!) { enqueue(task: "reliability.effect", input: $i) { id } }"""
READ = "query($id: ID!) { job(id: $id) { state attempts redelivery } }"
# The job outlasts the cut and the worker's reconnect (Celery waits 2 s before its second
# connection attempt), so a second delivery meets the first run still going.
JOB_SECONDS = 7.0
CUT_SECONDS = 1.5
# What the worker logs when a delivery of a job another run holds waits its turn.
DEFERRED = "waits for the run holding its lease"


@dataclass(frozen=True)
class Stack:
    records: EmbeddedValkey
    proxy: LoopbackProxy
    amqp_url: str
    api: GraphQL
    worker: str
    worker_log: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("amqp-reconnect")
    records = EmbeddedValkey(data_dir / "valkey").start()
    try:
        with rabbitmq_vhost() as amqp_url:
            host, vhost = amqp_url.removeprefix("amqp://").split("/", 1)
            proxy = LoopbackProxy(int(host.rsplit(":", 1)[1])).start()
            proxied = f"amqp://127.0.0.1:{proxy.port}/{vhost}"
            settings = Settings(redis_url=records.url, data_dir=data_dir, env="test")
            worker_env = service_env(
                records.url,
                data_dir,
                JOBQL_BROKER_URL=proxied,
                JOBQL_DEFAULT_QUEUE=QUEUE,
                JOBQL_WORKER_HEARTBEAT_INTERVAL="0.5",
            )
            api_env = service_env(
                records.url, data_dir, JOBQL_BROKER_URL=amqp_url, JOBQL_DEFAULT_QUEUE=QUEUE
            )
            try:
                with (
                    running_worker(worker_env, data_dir, settings, (QUEUE,), name=WORKER),
                    running_api(api_env, data_dir) as api,
                ):
                    yield Stack(records, proxy, amqp_url, api, WORKER, data_dir / f"{WORKER}.log")
            finally:
                proxy.stop()
    finally:
        records.stop()


def _settled(stack: Stack, settings: Settings, within: float) -> None:
    """Wait until no message of the queue is left: none ready on it, none the worker holds
    (running, reserved, or waiting for its countdown)."""
    control = create_celery_app(settings, producer=True)
    deadline = time.monotonic() + within
    try:
        with Connection(stack.amqp_url) as connection:  # type: ignore[no-untyped-call]
            while True:
                channel = connection.default_channel
                ready = channel.queue_declare(QUEUE, passive=True).message_count
                inspect = control.control.inspect(
                    destination=[f"{stack.worker}@{socket.gethostname()}"], timeout=2.0, limit=1
                )
                held = [
                    entry
                    for answer in (inspect.active(), inspect.reserved(), inspect.scheduled())
                    for entries in (answer or {}).values()
                    for entry in entries
                ]
                if not ready and not held:
                    return
                assert time.monotonic() < deadline, f"left: {ready} ready, held {held}"
                time.sleep(0.3)
    finally:
        control.close()


def _cut_mid_run(stack: Stack) -> tuple[str, int]:
    """A job started, then the worker's broker connections cut and healed while it runs;
    returns its id and where the worker's log stood before it."""
    log_from = stack.worker_log.stat().st_size
    job_id = stack.api.data(ENQUEUE, {"i": {"seconds": JOB_SECONDS}})["enqueue"]["id"]
    stack.api.wait(job_id, lambda j: j["state"] == "PROGRESS", 30)
    time.sleep(0.3)
    stack.proxy.set_mode("refuse")  # every broker connection of the worker is cut
    time.sleep(CUT_SECONDS)
    stack.proxy.set_mode("forward")
    return job_id, log_from


def _deferrals(stack: Stack, log_from: int, at_least: int = 0, within: float = 0) -> int:
    """How many deliveries waited for a run's lease since ``log_from`` (waiting for
    ``at_least`` of them up to ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        with stack.worker_log.open("rb") as log:
            log.seek(log_from)
            count = log.read().decode(errors="replace").count(DEFERRED)
        if count >= at_least or time.monotonic() > deadline:
            return count
        time.sleep(0.05)


def test_a_rabbitmq_reconnect_mid_job_does_not_start_a_second_run_meanwhile(
    stack: Stack, ledger: Ledger
) -> None:
    settings = Settings(redis_url=stack.records.url, broker_url=stack.amqp_url, env="test")
    client = redis.Redis.from_url(stack.records.url, decode_responses=True)
    job_id, log_from = _cut_mid_run(stack)
    healed = time.monotonic()

    # While the first run goes on: does a second one start?
    deadline = time.monotonic() + JOB_SECONDS + 10
    while client.llen(RUNS_KEY + job_id) < 2 and not client.llen(SPANS_KEY + job_id):
        assert time.monotonic() < deadline, "the first run never ended"
        time.sleep(0.05)
    overlapping = client.llen(RUNS_KEY + job_id) > 1 and not client.llen(SPANS_KEY + job_id)

    done = stack.api.wait_done(job_id, 30)
    _settled(stack, settings, 30)
    record = stack.api.data(READ, {"id": job_id})["job"]
    runs = client.lrange(RUNS_KEY + job_id, 0, -1)
    spans = client.lrange(SPANS_KEY + job_id, 0, -1)
    effects = 1 if client.hget(EFFECTS_KEY, job_id) else 0
    deferred = _deferrals(stack, log_from)
    client.close()
    seen = f"runs (pids) {runs}, spans {spans}, record {record}, deferred {deferred}"

    assert not overlapping, f"a second run started while the first ran: {seen}"
    assert done["state"] == "SUCCESS", seen
    assert len(runs) == 1, f"the body ran {len(runs)} times: {seen}"
    assert record["attempts"] == 1, seen
    assert effects == 1, seen
    ledger.submitted, ledger.terminal["SUCCESS"] = 1, 1
    ledger.reruns = len(runs) - 1
    # A side effect not keyed by the job id happens once per run that reaches it.
    ledger.duplicate_effects = max(len(spans) - 1, 0)
    ledger.notes.append(
        f"cut {CUT_SECONDS:g} s mid-run; the second delivery waited {deferred} times; "
        f"healed to nothing left queued {time.monotonic() - healed:.1f} s"
    )
    ledger.settle()


def test_a_waiting_delivery_runs_the_job_once_the_run_holding_it_is_lost(
    stack: Stack, ledger: Ledger
) -> None:
    """The lease never strands a job: the first run's pool process killed while a second
    delivery waits, that delivery takes the dead run's lease over and runs the job."""
    settings = Settings(redis_url=stack.records.url, broker_url=stack.amqp_url, env="test")
    client = redis.Redis.from_url(stack.records.url, decode_responses=True)
    job_id, log_from = _cut_mid_run(stack)
    assert _deferrals(stack, log_from, at_least=1, within=15), "no second delivery waited"
    first = int(client.lindex(RUNS_KEY + job_id, 0) or 0)

    os.kill(first, signal.SIGKILL)
    killed = time.time()

    done = stack.api.wait_done(job_id, 30)
    _settled(stack, settings, 30)
    record = stack.api.data(READ, {"id": job_id})["job"]
    runs = client.lrange(RUNS_KEY + job_id, 0, -1)
    spans = [tuple(map(float, span.split())) for span in client.lrange(SPANS_KEY + job_id, 0, -1)]
    effect = client.hget(EFFECTS_KEY, job_id)
    client.close()
    seen = f"runs (pids) {runs}, spans {spans}, record {record}"

    assert done["state"] == "SUCCESS", seen
    assert len(runs) == 2 and runs[0] == str(first), seen
    assert len(spans) == 1 and spans[0][0] >= killed, f"the second run began after: {seen}"
    assert effect == runs[1], f"the effect happened once, by the second run: {seen}"
    assert record["attempts"] == 2, seen
    ledger.submitted, ledger.terminal["SUCCESS"], ledger.reruns = 1, 1, 1
    ledger.notes.append(
        f"the first run's pool process killed while a delivery waited: run again "
        f"{spans[0][0] - killed:.1f} s after the kill"
    )
    ledger.settle()
