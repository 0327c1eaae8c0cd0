"""JobQL mounted in a Django project: one server, Django's users as the owners of jobs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import JOB_FIELDS, GraphQL
from tests.support.clients import TRANSPORTS, websocket

PLACE = """
mutation($item: String!, $quantity: Int!) {
  placeOrder(item: $item, quantity: $quantity) { id status jobId job { id task state } }
}
"""
WATCH = f"subscription($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"


def _order_row(order_id: str) -> Any:
    from orders.models import Order

    return Order.objects.get(pk=order_id)


def test_django_pages_and_jobql_are_served_by_one_server(server: str) -> None:
    with httpx.Client(base_url=server) as http:
        assert "Not signed in." in http.get("/").text  # Django's view
        assert http.get("/accounts/login/").status_code == 200  # Django's auth views
        assert http.get("/health/live").json() == {"status": "ok"}  # JobQL's


def test_a_caller_who_is_not_signed_in_is_refused(server: str) -> None:
    with httpx.Client(base_url=server) as http:
        response = http.post("/graphql", json={"query": "{ jobs { nodes { id } } }"})
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_the_signed_in_user_owns_the_job_their_order_starts(alice: GraphQL, bob: GraphQL) -> None:
    order = alice.data(PLACE, {"item": "tea", "quantity": 2})["placeOrder"]

    assert order["job"] == {"id": order["jobId"], "task": "fulfil_order", "state": "PENDING"}
    done = alice.wait_done(order["jobId"])
    assert done["state"] == "SUCCESS"
    assert done["result"] == {"orderId": int(order["id"]), "status": "shipped"}
    assert _order_row(order["id"]).status == "shipped", "the task wrote the model"
    listed = alice.data("{ jobs { nodes { id } } }")["jobs"]["nodes"]
    assert listed == [{"id": order["jobId"]}]
    assert bob.job(order["jobId"]) is None, "another user's job is not there for bob"
    assert bob.data("{ jobs { nodes { id } } }")["jobs"]["nodes"] == []


def test_tasks_autodiscovered_from_installed_apps_are_in_the_api(alice: GraphQL) -> None:
    names = {t["name"] for t in alice.data("{ tasks { name } }")["tasks"]}
    assert {"fulfil_order", "orders.count_orders"} <= names
    assert "generate_report" not in names, "only this project's tasks"

    plain = alice.data('mutation { enqueue(task: "orders.count_orders") { id } }')["enqueue"]

    assert alice.wait_done(plain["id"])["state"] == "SUCCESS"
    typed = alice.error("mutation { fulfilOrder(input: { orderId: 0 }) { id } }")
    assert typed["extensions"]["code"] == "BAD_USER_INPUT"
    assert typed["extensions"]["fields"][0]["path"] == "input.orderId"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
async def test_each_transport_streams_the_job_to_its_signed_in_owner(
    alice: GraphQL, transport: str
) -> None:
    order = alice.data(PLACE, {"item": "cups", "quantity": 1})["placeOrder"]
    cookie = alice.http.headers["cookie"]

    stream = await TRANSPORTS[transport](
        alice.base_url, WATCH, {"id": order["jobId"]}, headers={"cookie": cookie}
    )

    assert stream.completed and not stream.errors, stream.results
    assert stream.jobs[-1]["state"] == "SUCCESS"
    assert stream.jobs[-1]["result"]["status"] == "shipped"


async def test_a_websocket_from_another_site_is_refused_despite_the_cookie(
    alice: GraphQL,
) -> None:
    cookie = alice.http.headers["cookie"]
    foreign = {"cookie": cookie, "origin": "https://elsewhere.example"}
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(alice.base_url, "graphql-transport-ws", additional_headers=foreign):
            pass
    assert refused.value.response.status_code == 403
