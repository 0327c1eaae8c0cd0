"""JobQL mounted in a Django project: one server, Django's users as the owners of jobs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import JOB_FIELDS, GraphQL
from tests.support.clients import TRANSPORTS, receive, send, websocket

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


def test_the_dashboard_is_served_and_signs_in_with_the_django_session(alice: GraphQL) -> None:
    """The dashboard's page comes from the same server, and its first question, ``viewer``,
    is answered from the user's session cookie: no token to enter inside a Django site."""
    page = alice.http.get("/dashboard/")
    assert page.status_code == 200 and "<script" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    viewer = alice.data("{ viewer { owner admin } }")["viewer"]
    assert viewer["owner"].startswith("alice-") and viewer["admin"] is False


def test_a_caller_who_is_not_signed_in_is_refused(server: str) -> None:
    with httpx.Client(base_url=server) as http:
        response = http.post("/graphql", json={"query": "{ jobs { nodes { id } } }"})
    assert response.status_code == 401
    assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_the_signed_in_user_owns_the_job_their_order_starts(alice: GraphQL, bob: GraphQL) -> None:
    order = alice.data(PLACE, {"item": "tea", "quantity": 2})["placeOrder"]

    # The job is sent at the commit, before the answer: a worker may have started it already.
    assert order["job"]["id"] == order["jobId"] and order["job"]["task"] == "fulfil_order"
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


def _log_out(cookie: str) -> None:
    """What Django's logout view does with the request that carries ``cookie``."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.cookies[settings.SESSION_COOKIE_NAME] = cookie.split("=", 1)[1]
    client.logout()


async def test_a_logout_closes_the_users_websockets_within_the_recheck_interval(
    alice: GraphQL, bob: GraphQL
) -> None:
    """The session is signed in again every JOBQL_SESSION_RECHECK_SECONDS (0.5 s here):
    once alice logs out, her socket's operation gets UNAUTHENTICATED and it closes with
    4403; bob's, signed in by his own session, stays open."""
    subscribe = {
        "id": "1",
        "type": "subscribe",
        "payload": {"query": "subscription { jobs { id } }"},
    }
    async with contextlib.AsyncExitStack() as stack:
        sockets = {}
        for user in (alice, bob):
            headers = {"cookie": user.http.headers["cookie"]}
            ws = await stack.enter_async_context(
                websocket(user.base_url, "graphql-transport-ws", additional_headers=headers)
            )
            await send(ws, {"type": "connection_init", "payload": {}})
            assert (await receive(ws))["type"] == "connection_ack"
            await send(ws, subscribe)
            sockets[user] = ws
        await asyncio.to_thread(_log_out, alice.http.headers["cookie"])
        logged_out = time.monotonic()
        messages = []
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    messages.append(await receive(sockets[alice]))
        assert time.monotonic() - logged_out < 0.5 + 0.5
        assert sockets[alice].close_code == 4403
        assert [m for m in messages if m["type"] != "ping"] == [
            {
                "id": "1",
                "type": "error",
                "payload": [
                    {"message": "the session ended", "extensions": {"code": "UNAUTHENTICATED"}}
                ],
            }
        ]
        await send(sockets[bob], {"type": "ping"})
        assert (await receive(sockets[bob]))["type"] == "pong", "bob's session goes on"
