"""Jobs started inside a Django transaction exist from its commit on, and never after a rollback."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from asgiref.sync import sync_to_async

from gql.django import blocking_jobs
from tests.conftest import AsyncGraphQL, GraphQL
from tests.support.clients import graphql_transport_ws

PLACE = 'mutation($q: Int!) { placeOrder(item: "tea", quantity: $q) { id jobId } }'
EVERY_JOB = "subscription { jobs { id state } }"


def _record(job_id: str) -> object:
    return blocking_jobs().get(job_id)


def _orders(**lookup: object) -> list[int]:
    from orders.models import Order

    return [o.quantity for o in Order.objects.filter(**lookup)]


async def test_an_order_refused_in_its_transaction_starts_no_job(alice: GraphQL) -> None:
    cookie = {"cookie": alice.http.headers["cookie"]}
    seen: list[str] = []
    watching = asyncio.create_task(
        graphql_transport_ws(
            alice.base_url, EVERY_JOB, {}, within=20, headers=cookie,
            on_result=lambda r: seen.append(r["data"]["jobs"]["id"]),
        )
    )  # fmt: skip
    async with AsyncGraphQL(alice.base_url) as api:
        api.http.headers.update(cookie)
        await asyncio.sleep(0.5)  # the stream is open before anything is ordered

        kept = (await api.data(PLACE, {"q": 8}))["placeOrder"]
        refused = await api.error(PLACE, {"q": 5})  # 8 + 5 is over the limit of 10
        await api.wait_done(kept["jobId"])
        await asyncio.sleep(0.5)
        listed = (await api.data("{ jobs { nodes { id task } } }"))["jobs"]["nodes"]
    watching.cancel()

    assert refused["extensions"]["code"] == "BAD_USER_INPUT"
    assert refused["extensions"]["fields"][0]["path"] == "quantity"
    assert listed == [{"id": kept["jobId"], "task": "fulfil_order"}], "one job: the kept order's"
    assert await sync_to_async(_orders)(job_id=kept["jobId"]) == [8]
    assert await sync_to_async(_orders)(quantity=5, owner__startswith="alice-") == []
    assert seen and set(seen) == {kept["jobId"]}, "the stream heard only of the kept job"


def test_a_job_saved_in_a_transaction_appears_at_its_commit(worker: object, env: object) -> None:
    from django.db import transaction
    from orders.models import Order

    owner = f"carol-{secrets.token_hex(3)}"
    with transaction.atomic():
        order = Order.objects.create(owner=owner, item="jam", quantity=1)
        assert order.job_id, "the id is known at once, to store beside the row"
        time.sleep(0.3)
        assert _record(order.job_id) is None, "nothing is written before the commit"

    assert _record(order.job_id) is not None, "written by the commit"
    deadline = time.monotonic() + 30
    while (snapshot := _record(order.job_id)) is None or not snapshot.done:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, snapshot
        time.sleep(0.05)
    assert snapshot.state == "SUCCESS", "the worker found the committed row"  # type: ignore[attr-defined]
    order.refresh_from_db()
    assert order.status == "shipped"


def test_a_rolled_back_save_leaves_no_record_message_or_event(
    worker: object, env: object, alice: GraphQL
) -> None:
    from django.db import transaction
    from orders.models import Order

    from tasks.core import records, slots

    owner = f"dave-{secrets.token_hex(3)}"
    events = blocking_jobs()._redis.pubsub()
    events.subscribe(*(records.owner_channel(owner, tag) for tag in slots.tags()))

    class Refused(Exception):
        pass

    with pytest.raises(Refused), transaction.atomic():
        job_id = Order.objects.create(owner=owner, item="jam", quantity=1).job_id
        raise Refused

    time.sleep(1.5)  # a message, had one been sent, would have reached the worker by now
    assert _record(job_id) is None, "no record, and no worker ever started it"
    assert alice.job(job_id) is None
    messages = iter(lambda: events.get_message(timeout=0.1), None)
    heard = [m for m in messages if m["type"] == "message"]
    assert heard == [], "no PENDING event was published"
    assert not Order.objects.filter(owner=owner).exists()
    events.close()
