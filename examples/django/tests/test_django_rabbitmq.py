"""Django's synchronous enqueue (``enqueue_on_commit``, ``gql.services.blocking``) with RabbitMQ as
the broker: the job's record is written at the commit and its message sent by Celery's producer
to RabbitMQ, read back here as a worker would get it; a message RabbitMQ refuses takes the job
back, tells whoever saw its ``PENDING`` that it ended unsent, and leaves the marker that makes
a worker drop the message should it land after all.

A virtual host of this module's own, which no worker consumes (so the message stays there to
be read; a worker running what the same producer sends to RabbitMQ is
``tests/live/test_rabbitmq.py``'s); skipped, with the reason, where no RabbitMQ is reachable.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from amqp.exceptions import MessageNacked
from kombu import Connection

from gql.services.blocking import BlockingJobs
from gql.services.plans import EnqueueRequest
from tasks.core import rabbitmq, records, slots
from tasks.core.messages import OWNER_HEADER
from tasks.core.settings import get_settings
from tests.support.servers import rabbitmq_unavailable, rabbitmq_vhost

pytestmark = pytest.mark.skipif(
    rabbitmq_unavailable() is not None,
    reason=f"{rabbitmq_unavailable()}; Django's enqueue on RabbitMQ is not tried",
)

# A policy makes RabbitMQ refuse every message sent to this queue (max-length 0, reject-publish).
REFUSING = "full"
QUEUE = "jobql"  # the default queue, where fulfil_order goes


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A virtual host with a refusing queue."""
    with rabbitmq_vhost() as url:
        subprocess.run(
            ["rabbitmqctl", "--quiet", "set_policy", "-p", url.rsplit("/", 1)[1],
             "--apply-to", "queues", "refuse-all", f"^{REFUSING}$",
             '{"max-length": 0, "overflow": "reject-publish"}'],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        yield url


@pytest.fixture
def jobs(
    broker: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[BlockingJobs]:
    """What ``gql.django.blocking_jobs()`` builds in a project whose broker is RabbitMQ, in
    its place for this test: ``Order.save``'s ``enqueue_on_commit`` goes through it."""
    import gql.django
    from tasks.core.app import registry

    gql.django.load_tasks()
    settings = get_settings().model_copy(update={"broker_url": broker, "extra_queues": (REFUSING,)})
    made = BlockingJobs(settings, registry)
    monkeypatch.setattr(gql.django, "_jobs", made)
    try:
        yield made
    finally:
        made.close()


def test_a_job_saved_in_a_transaction_is_sent_to_rabbitmq_at_its_commit(
    broker: str, jobs: BlockingJobs
) -> None:
    from django.db import transaction
    from orders.models import Order

    owner = f"erin-{secrets.token_hex(3)}"
    with Connection(broker) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        rabbitmq.queue(jobs.settings, QUEUE).bind(channel).declare()  # as a worker declares it
        with transaction.atomic():
            order = Order.objects.create(owner=owner, item="tea", quantity=1)
            assert jobs.get(order.job_id) is None, "nothing is written before the commit"
            assert channel.basic_get(QUEUE, no_ack=True) is None, "nor sent"
        message = channel.basic_get(QUEUE, no_ack=True)

    snapshot = jobs.get(order.job_id)
    assert snapshot is not None and snapshot.state == "PENDING", "recorded at the commit"
    assert message is not None, "sent to RabbitMQ at the commit"
    assert (message.headers["id"], message.headers["task"]) == (order.job_id, "fulfil_order")
    assert message.headers[OWNER_HEADER] == owner, "a worker records its owner from it"
    assert json.loads(message.body)[1] == {"orderId": order.pk}, "its input, as given"


def test_a_message_rabbitmq_refuses_takes_its_job_back(jobs: BlockingJobs) -> None:
    owner = f"frank-{secrets.token_hex(3)}"
    watch = jobs._redis.pubsub()
    watch.subscribe(*(records.owner_channel(owner, tag) for tag in slots.tags()))
    try:
        while watch.get_message(timeout=0.2) is not None:
            pass  # the subscribe confirmations
        prepared = jobs.prepare(
            "fulfil_order", {"orderId": 1}, owner, EnqueueRequest(queue=REFUSING)
        )
        job_id = prepared.fields["id"]
        with pytest.raises(Exception) as refused:
            jobs.write(prepared)
        heard = [json.loads(m["data"]) for m in iter(lambda: watch.get_message(timeout=0.5), None)]
    finally:
        watch.close()

    # Celery's producer raises it as kombu's OperationalError (an empty message), from this.
    assert isinstance(refused.value.__cause__, MessageNacked), repr(refused.value)
    assert jobs.get(job_id) is None, "the record was taken back"
    assert jobs._redis.exists(records.unsent_key(job_id)), "a late message would be dropped"
    assert [(e["id"], e["state"]) for e in heard] == [(job_id, "PENDING"), (job_id, "REVOKED")]
    assert json.loads(heard[1]["error"])["type"] == "NotSent"
