"""RabbitMQ as the broker is a setting, not a fork: the same jobs run through it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.settings import Settings
from tests.conftest import GraphQL, running_api, running_worker, service_env

# No credentials here: kombu logs in with RabbitMQ's stock development user by default.
AMQP_URL = "amqp://127.0.0.1:5672//"


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=0.5):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not _rabbitmq_reachable(), reason="no RabbitMQ on 127.0.0.1:5672; broker tests skipped"
    ),
]


@pytest.fixture(scope="module")
def amqp_api(valkey: object, data_dir: Path) -> Iterator[GraphQL]:
    """An API and a worker that share Valkey for records but send tasks through RabbitMQ."""
    rabbit_dir = data_dir / "rabbitmq"
    queue = "jobql-amqp-test"
    env = service_env(
        valkey.url,  # type: ignore[attr-defined]
        rabbit_dir,
        JOBQL_BROKER_URL=AMQP_URL,
        JOBQL_DEFAULT_QUEUE=queue,
    )
    settings = Settings(redis_url=valkey.url, broker_url=AMQP_URL)  # type: ignore[attr-defined]
    with (
        running_worker(env, rabbit_dir, settings, queues=(queue,)),
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
