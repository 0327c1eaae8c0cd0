"""Periodic jobs in the Django deployment: schedules kept in django-celery-beat's models
(what the Django admin shows), run by a real beat process as jobs of their owner."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest

from tests.conftest import GraphQL

FIELDS = "id name task input interval crontab { minute hour } timezone enabled runs lastJobId"
CREATE = f"""
mutation($name: String!, $timing: ScheduleTiming!) {{
  createSchedule(name: $name, task: "orders.count_orders", input: {{ status: "shipped" }},
                 timing: $timing) {{ {FIELDS} }}
}}"""
UPDATE = f"""
mutation($id: ID!, $name: String, $timing: ScheduleTiming) {{
  updateSchedule(id: $id, name: $name, timing: $timing) {{ {FIELDS} }}
}}"""
RUNS = '{ jobs(first: 100, filter: { task: "orders.count_orders" }) { nodes { id schedule } } }'
EVERY_SECOND = {"interval": 1}


def _runs(user: GraphQL, name: str) -> list[dict[str, Any]]:
    return [j for j in user.data(RUNS)["jobs"]["nodes"] if j["schedule"] == name]


def _wait_for_runs(user: GraphQL, name: str, count: int, within: float = 20) -> list[Any]:
    deadline = time.monotonic() + within
    while len(runs := _runs(user, name)) < count:
        assert time.monotonic() < deadline, f"{len(runs)} runs of {name} after {within} s"
        time.sleep(0.2)
    return runs


def _settled_runs(user: GraphQL, name: str) -> int:
    """The runs once a tick under way at a change has landed; none may follow."""
    time.sleep(1.5)
    settled = len(_runs(user, name))
    time.sleep(2)
    assert len(_runs(user, name)) == settled, f"{name} ran after it was stopped"
    return settled


def _periodic_task(schedule_id: str) -> Any:
    from django_celery_beat.models import PeriodicTask

    return (
        PeriodicTask.objects.select_related("interval", "crontab")
        .filter(jobql__id=schedule_id)
        .first()
    )


def test_an_every_second_schedule_is_a_periodic_task_run_as_jobs_of_its_owner(
    alice: GraphQL, bob: GraphQL, beat: subprocess.Popen[bytes]
) -> None:
    schedule = alice.data(CREATE, {"name": "stock-count", "timing": EVERY_SECOND})
    schedule = schedule["createSchedule"]
    assert schedule["enabled"] and schedule["runs"] == 0

    row = _periodic_task(schedule["id"])
    assert row is not None, "the schedule is a PeriodicTask, as the Django admin lists them"
    assert (row.task, row.enabled, row.queue) == ("orders.count_orders", True, "jobql")
    assert (row.interval.every, row.interval.period) == (1, "seconds")
    assert row.name.endswith("/stock-count") and row.kwargs == '{"status":"shipped"}'

    runs = _wait_for_runs(alice, "stock-count", 2)
    assert alice.wait_done(runs[0]["id"])["state"] == "SUCCESS", "a worker ran it"
    assert bob.data("{ schedules { id } }")["schedules"] == [], "bob sees none of alice's"
    assert _runs(bob, "stock-count") == []
    error = bob.error(
        "mutation($id: ID!) { disableSchedule(id: $id) { id } }", {"id": schedule["id"]}
    )
    assert error["extensions"]["code"] == "NOT_FOUND"

    shown = alice.data(f"{{ schedules {{ {FIELDS} }} }}")["schedules"][0]
    assert shown["runs"] >= 2
    assert shown["lastJobId"] in {r["id"] for r in _runs(alice, "stock-count")}
    row.refresh_from_db()
    assert row.total_run_count >= 2 and row.last_run_at is not None, "beat's own count"

    alice.data("mutation($id: ID!) { disableSchedule(id: $id) { id } }", {"id": schedule["id"]})
    assert not _periodic_task(schedule["id"]).enabled
    stopped = _settled_runs(alice, "stock-count")
    alice.data("mutation($id: ID!) { enableSchedule(id: $id) { id } }", {"id": schedule["id"]})
    _wait_for_runs(alice, "stock-count", stopped + 1)

    alice.data("mutation($id: ID!) { deleteSchedule(id: $id) { id } }", {"id": schedule["id"]})
    assert _periodic_task(schedule["id"]) is None, "its PeriodicTask is gone"
    _settled_runs(alice, "stock-count")


def test_names_cap_timings_and_admin_edits_live_in_the_periodic_task(
    alice: GraphQL, bob: GraphQL
) -> None:
    nightly = {"crontab": {"minute": "0", "hour": "3"}, "timezone": "Europe/Paris"}
    made = alice.data(CREATE, {"name": "nightly", "timing": nightly})["createSchedule"]
    cron = _periodic_task(made["id"]).crontab
    assert (cron.minute, cron.hour, str(cron.timezone)) == ("0", "3", "Europe/Paris")

    error = alice.error(CREATE, {"name": "nightly", "timing": EVERY_SECOND})
    assert error["extensions"]["fields"][0]["path"] == "name", "a name is unique per owner"
    assert bob.data(CREATE, {"name": "nightly", "timing": EVERY_SECOND})["createSchedule"]

    alice.data(CREATE, {"name": "two", "timing": {"interval": 3600}})
    alice.data(CREATE, {"name": "three", "timing": {"interval": 1.5}})
    error = alice.error(CREATE, {"name": "four", "timing": EVERY_SECOND})
    assert "3 schedules" in error["message"], "the per-owner cap (3 in these tests)"

    changed = alice.data(UPDATE, {"id": made["id"], "name": "hourly", "timing": {"interval": 90}})
    assert changed["updateSchedule"]["interval"] == 90
    row = _periodic_task(made["id"])
    assert row.crontab is None and (row.interval.every, row.interval.period) == (90, "seconds")
    assert row.name.endswith("/hourly")
    error = alice.error(UPDATE, {"id": made["id"], "name": "two"})
    assert error["extensions"]["fields"][0]["path"] == "name"

    row.enabled = False  # as the Django admin saves it
    row.save()
    shown = alice.data("query($id: ID!) { schedule(id: $id) { enabled nextRunAt } }", made)
    assert shown["schedule"] == {"enabled": False, "nextRunAt": None}
    listed = alice.data(f"{{ schedules {{ {FIELDS} }} }}")["schedules"]
    assert [s["interval"] for s in listed if s["name"] == "three"] == [1.5], "kept in µs"


async def test_a_database_that_does_not_answer_is_service_unavailable(database: str) -> None:
    """The store's queries run off the event loop; a refused connection is an answer the
    client can act on, not a masked internal error."""
    from django.db import connections

    from devtools.processes import free_port
    from gql.django.schedule_store import DjangoScheduleStore
    from gql.services.errors import ErrorCode, ServiceUnavailable

    settings = connections.settings["default"]
    port = settings["PORT"]
    settings["PORT"] = str(free_port())  # nothing listens there: connections are refused
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            await DjangoScheduleStore("jobql").list("alice")
    finally:
        settings["PORT"] = port
    assert refused.value.extensions["code"] == ErrorCode.SERVICE_UNAVAILABLE
