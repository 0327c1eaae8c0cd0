"""Periodic jobs in the Django deployment: a signed-in user's schedule, run by a real beat."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from tests.conftest import GraphQL

CREATE = """
mutation($name: String!) {
  createSchedule(name: $name, task: "orders.count_orders", input: { status: "shipped" },
                 timing: { interval: 1 }) { id name runs enabled }
}"""
RUNS = '{ jobs(first: 100, filter: { task: "orders.count_orders" }) { nodes { id schedule } } }'


def _runs(user: GraphQL, name: str) -> list[dict[str, Any]]:
    return [j for j in user.data(RUNS)["jobs"]["nodes"] if j["schedule"] == name]


def test_an_every_second_schedule_runs_as_jobs_of_the_signed_in_user(
    alice: GraphQL, bob: GraphQL, beat: subprocess.Popen[bytes]
) -> None:
    schedule = alice.data(CREATE, {"name": "stock-count"})["createSchedule"]
    assert schedule["enabled"] and schedule["runs"] == 0

    deadline = time.monotonic() + 20
    while len(runs := _runs(alice, "stock-count")) < 2:
        assert time.monotonic() < deadline, f"{len(runs)} runs after 20 s"
        time.sleep(0.2)

    assert alice.wait_done(runs[0]["id"])["state"] == "SUCCESS", "a worker ran it"
    assert bob.data("{ schedules { id } }")["schedules"] == [], "bob sees none of alice's"
    assert _runs(bob, "stock-count") == []
    alice.data("mutation($id: ID!) { deleteSchedule(id: $id) { id } }", {"id": schedule["id"]})
    time.sleep(1.5)  # a tick under way when it was deleted may still land
    settled = len(_runs(alice, "stock-count"))
    time.sleep(2)
    assert len(_runs(alice, "stock-count")) == settled, "no run after the deletion"
