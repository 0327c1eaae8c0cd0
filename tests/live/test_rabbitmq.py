"""RabbitMQ as the broker is a setting, not a fork: the same jobs run through it.

Each module's stack runs in a virtual host of its own (``tests.support.servers``), so its queues
meet no other run's messages or arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from kombu.exceptions import OperationalError

from devtools.valkey import EmbeddedValkey
from tasks.core import events, records, redis_clients, slots
from tasks.core.app import create_celery_app
from tasks.core.rabbitmq import PER_QUEUE_TIMEOUT_SINCE, version_of
from tasks.core.settings import Settings, get_settings
from tasks.worker.beat import RunStarter
from tests.conftest import ROOT, GraphQL, running_api, running_worker, service_env
from tests.support.clients import graphql_transport_ws
from tests.support.servers import rabbitmq_unavailable, rabbitmq_vhost

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        rabbitmq_unavailable() is not None,
        reason=f"{rabbitmq_unavailable()}; RabbitMQ broker tests skipped",
    ),
]

QUEUE = "jobql"
# Consumed by no worker: what is sent there stays, in the order RabbitMQ would deliver it.
IDLE = "idle"
# A policy makes RabbitMQ refuse every message sent there (max-length 0, reject-publish).
FULL = "full"
REFUSED = f'mutation {{ processData(input: {{data: 1}}, options: {{queue: "{FULL}"}}) {{ id }} }}'


def _stack(
    valkey: EmbeddedValkey, data_dir: Path, amqp_url: str, **extra: str
) -> tuple[dict[str, str], Settings]:
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_BROKER_URL=amqp_url,
        JOBQL_DEFAULT_QUEUE=QUEUE,
        JOBQL_EXTRA_QUEUES=f'["reports", "{IDLE}", "{FULL}"]',
        **extra,
    )
    return env, Settings(redis_url=valkey.url, broker_url=amqp_url)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture(scope="module")
def amqp_api(valkey: EmbeddedValkey, data_dir: Path, vhost: str) -> Iterator[GraphQL]:
    """An API and a worker that share Valkey for records but send tasks through RabbitMQ."""
    rabbit_dir = data_dir / "rabbitmq"
    env, settings = _stack(valkey, rabbit_dir, vhost)
    name = vhost.rsplit("/", 1)[1]
    subprocess.run(
        ["rabbitmqctl", "--quiet", "set_policy", "-p", name, "--apply-to", "queues",
         "refuse-all", f"^{FULL}$", '{"max-length": 0, "overflow": "reject-publish"}'],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with (
        running_worker(env, rabbit_dir, settings, queues=(QUEUE, "reports")),
        running_api(env, rabbit_dir) as client,
    ):
        yield client


def test_a_job_runs_through_rabbitmq(amqp_api: GraphQL) -> None:
    job = amqp_api.data(
        "mutation { generateReport(input: {userId: 9, steps: 3, stepDelay: 0.05}) { id queue } }"
    )["generateReport"]

    done = amqp_api.wait_done(job["id"])

    assert done["state"] == "SUCCESS"
    assert done["result"] == {"userId": 9, "reportUrl": "/reports/9.pdf"}
    assert done["progress"]["current"] == 3


def test_a_scheduled_job_is_cancelled_through_rabbitmq(amqp_api: GraphQL) -> None:
    job = amqp_api.data(
        "mutation { processData(input: {data: 1, delay: 0}, options: {countdown: 1}) { id } }"
    )["processData"]
    cancelled = amqp_api.data(
        "mutation($id: ID!) { cancelJob(id: $id) { state } }", {"id": job["id"]}
    )["cancelJob"]
    assert cancelled["state"] == "REVOKED"
    time.sleep(2)
    assert amqp_api.job(job["id"])["startedAt"] is None


def test_health_sees_the_rabbitmq_broker(amqp_api: GraphQL) -> None:
    health = amqp_api.data("{ health { broker { ok } workers } }")["health"]
    assert health["broker"]["ok"] is True
    assert len(health["workers"]) == 1, "only the worker on RabbitMQ answers through it"


def test_a_batch_runs_through_rabbitmq(amqp_api: GraphQL) -> None:
    jobs = amqp_api.data(
        "mutation { processDataMany(inputs: [{data: 1, delay: 0}, {data: 2, delay: 0}]) { id } }"
    )["processDataMany"]

    done = [amqp_api.wait_done(job["id"]) for job in jobs]

    assert [job["state"] for job in done] == ["SUCCESS", "SUCCESS"]
    assert [job["result"]["processed"] for job in done] == [1, 2]


def test_priority_zero_is_delivered_first_as_on_redis(amqp_api: GraphQL, vhost: str) -> None:
    """JobQL's 0 (and no priority) first, 9 last: RabbitMQ's order is the reverse, mapped."""
    sent = {}
    for label, priority in (("nine", 9), ("five", 5), ("none", None), ("zero", 0)):
        options = "" if priority is None else f"priority: {priority}, "
        sent[label] = amqp_api.data(
            f'mutation {{ processData(input: {{data: "{label}", delay: 0}}, '
            f'options: {{{options}queue: "{IDLE}"}}) {{ id }} }}'
        )["processData"]["id"]

    order = []
    with Connection(vhost) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        for _ in sent:
            message = channel.basic_get(IDLE, no_ack=True)
            order.append(message.headers["id"])

    labels = {job_id: label for label, job_id in sent.items()}
    first_two, last_two = {labels[i] for i in order[:2]}, [labels[i] for i in order[2:]]
    assert first_two == {"none", "zero"}, order
    assert last_two == ["five", "nine"]


def test_a_message_rabbitmq_refuses_is_service_unavailable_and_leaves_no_job(
    amqp_api: GraphQL,
) -> None:
    """Publisher confirms: without them the refused message vanished and the job stayed
    PENDING for ever."""
    before = amqp_api.newest_job_id()

    error = amqp_api.error(REFUSED)

    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert amqp_api.newest_job_id() == before, "the unsent job's record was taken away"
    # The broker is up: the next job goes through at once.
    job = amqp_api.data("mutation { processData(input: {data: 2, delay: 0}) { id } }")
    assert amqp_api.wait_done(job["processData"]["id"])["state"] == "SUCCESS"


def test_a_refused_job_is_seen_created_then_ended_on_the_jobs_stream(amqp_api: GraphQL) -> None:
    """A job is announced before its message is sent (so no worker's STARTED can overtake
    its PENDING on the stream); when RabbitMQ then refuses the message, the watcher that
    saw the PENDING is told the job ended, and the record is gone."""
    query = "subscription { jobs { id state sequence error { type } } }"
    seen: list[dict[str, Any]] = []

    async def scenario() -> dict[str, Any]:
        def on_result(result: dict[str, Any]) -> None:
            seen.append(result["data"]["jobs"])

        watcher = asyncio.create_task(
            graphql_transport_ws(amqp_api.base_url, query, {}, within=8, on_result=on_result)
        )
        await asyncio.sleep(1)  # subscribed
        error = await asyncio.to_thread(amqp_api.error, REFUSED)
        with contextlib.suppress(TimeoutError):
            await watcher
        return error

    error = asyncio.run(scenario())

    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
    assert [(s["state"], s["sequence"]) for s in seen] == [("PENDING", 0), ("REVOKED", 1)], seen
    assert seen[1]["error"] == {"type": "NotSent"}
    assert len({s["id"] for s in seen}) == 1
    assert amqp_api.job(seen[0]["id"]) is None, "the unsent job's record was taken away"


def test_a_scheduled_run_rabbitmq_refuses_is_taken_back_and_its_late_message_dropped(
    amqp_api: GraphQL, vhost: str, valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beat's send of a schedule's run (tasks.worker.beat.RunStarter, in this process as in
    a beat) refused: the run is taken back as the API takes back an enqueue, so its message,
    had it landed after all, is dropped by the worker rather than run beside the new job
    that the tick's next try makes. Before, the record was only deleted: a worker adopted
    the late message and the tick ran twice."""
    monkeypatch.setenv("JOBQL_REDIS_URL", valkey.url)
    monkeypatch.setenv("JOBQL_BROKER_URL", vhost)
    monkeypatch.setenv("JOBQL_EXTRA_QUEUES", f'["reports", "{IDLE}", "{FULL}"]')  # as _stack's
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    get_settings.cache_clear()
    owner = f"beat-{uuid.uuid4().hex[:8]}"
    ours = {"owner": owner, "name": "tick", "input": {"data": 1}, "queue": FULL, "priority": None}
    starter = RunStarter(create_celery_app(get_settings()))
    watch = events.client().pubsub()
    try:
        watch.subscribe(*(records.owner_channel(owner, tag) for tag in slots.tags()))
        while watch.get_message(timeout=0.2) is not None:
            pass  # the subscribe confirmations
        with pytest.raises(OperationalError):
            starter.start(str(uuid.uuid4()), "process_data", {"data": 1}, ours, None)
        heard = [json.loads(m["data"]) for m in iter(lambda: watch.get_message(timeout=0.5), None)]
        assert [e["state"] for e in heard] == ["PENDING", "REVOKED"], heard
        job_id = heard[0]["id"]
        assert events.client().exists(records.unsent_key(job_id)), "a marker stays"
        assert amqp_api.job(job_id) is None, "its record was taken back"
        # What a worker's start of the job does when its message lands (JobTask.before_start).
        late = events.started(job_id, "process_data", 0, {"data": 1}, QUEUE, "late-worker")
        assert late == "REVOKED", "the late message is dropped, not adopted"
        assert amqp_api.job(job_id) is None, "nor was the job recorded again"
    finally:
        watch.close()
        starter.close()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def quorum_api(valkey: EmbeddedValkey, data_dir: Path) -> Iterator[GraphQL]:
    quorum_dir = data_dir / "rabbitmq-quorum"
    with rabbitmq_vhost() as url:
        env, settings = _stack(valkey, quorum_dir, url, JOBQL_RABBITMQ_QUEUE_TYPE="quorum")
        with (
            running_worker(env, quorum_dir, settings, queues=(QUEUE,)),
            running_api(env, quorum_dir) as client,
        ):
            yield client


def test_quorum_queues_run_jobs_countdowns_and_priorities(quorum_api: GraphQL) -> None:
    """A quorum queue takes no x-max-priority (RabbitMQ refuses the declaration): JobQL
    leaves it out, so prioritised jobs still run; a countdown goes through Celery's native
    delayed delivery."""
    now = quorum_api.data(
        "mutation { processData(input: {data: 1, delay: 0}, options: {priority: 3}) { id } }"
    )["processData"]
    later = quorum_api.data(
        "mutation { processData(input: {data: 2, delay: 0}, options: {countdown: 1}) "
        "{ id createdAt } }"
    )["processData"]

    assert quorum_api.wait_done(now["id"])["state"] == "SUCCESS"
    done = quorum_api.wait_done(later["id"])
    assert done["state"] == "SUCCESS"
    waited = datetime.fromisoformat(done["startedAt"]) - datetime.fromisoformat(later["createdAt"])
    assert waited.total_seconds() >= 0.9


def test_the_declared_queues_carry_the_consumer_timeout_and_priorities(
    amqp_api: GraphQL, vhost: str
) -> None:
    listed = subprocess.run(
        ["rabbitmqctl", "--quiet", "list_queues", "-p", vhost.rsplit("/", 1)[1],
         "name", "arguments"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    line = next(row for row in listed.splitlines() if row.split("\t")[0] == QUEUE)
    assert "x-consumer-timeout" in line and "3600000" in line, line
    assert "x-max-priority" in line, line


def test_jobql_check_sees_rabbitmq_and_says_what_the_server_ignores(
    amqp_api: GraphQL, valkey: EmbeddedValkey, vhost: str, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JOBQL_ENV": "test",
           "JOBQL_REDIS_URL": valkey.url, "JOBQL_BROKER_URL": vhost}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "gql.cli", "check"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert f"ok    broker at {vhost} answers" in result.stdout, result.stdout
    with Connection(vhost) as connection:  # type: ignore[no-untyped-call]
        connection.connect()
        version = version_of(connection.connection.server_properties)
    if version < PER_QUEUE_TIMEOUT_SINCE:
        assert "warn  broker: RabbitMQ" in result.stdout and "consumer_timeout" in result.stdout
