"""Scheduling, cancelling, retrying and de-duplicating jobs, as a client drives them."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

from tests.conftest import JOB_FIELDS, GraphQL

REPORT = """
mutation($i: GenerateReportInput!, $o: EnqueueOptions) {
  generateReport(input: $i, options: $o) { %s }
}
"""


def _report(
    api: GraphQL, data: dict[str, object], options: dict[str, object] | None = None
) -> dict:
    return api.data(REPORT % JOB_FIELDS, {"i": data, "o": options})["generateReport"]


def _cancel(api: GraphQL, job_id: str, terminate: bool = False) -> dict:
    query = "mutation($id: ID!, $t: Boolean) { cancelJob(id: $id, terminate: $t) { %s } }"
    return api.data(query % JOB_FIELDS, {"id": job_id, "t": terminate})["cancelJob"]


def test_a_cancelled_scheduled_job_is_revoked_and_never_runs(api: GraphQL) -> None:
    job = _report(api, {"userId": 1, "steps": 1, "stepDelay": 0}, {"countdown": 1.5})

    cancelled = _cancel(api, job["id"])

    assert cancelled["state"] == "REVOKED" and cancelled["done"]
    assert cancelled["error"]["type"] == "Revoked"
    time.sleep(2.5)  # past the countdown: a worker now holds the message and must skip it
    after = api.job(job["id"])
    assert after["state"] == "REVOKED"
    assert after["startedAt"] is None and after["result"] is None


def test_a_running_job_stops_only_with_terminate(api: GraphQL) -> None:
    job = _report(api, {"userId": 1, "steps": 200, "stepDelay": 0.05})
    api.wait(job["id"], lambda j: j["state"] == "PROGRESS")

    refused = api.error("mutation($id: ID!) { cancelJob(id: $id) { id } }", {"id": job["id"]})
    assert refused["extensions"]["code"] == "BAD_USER_INPUT"
    assert refused["extensions"]["fields"][0]["path"] == "terminate"

    cancelled = _cancel(api, job["id"], terminate=True)
    assert cancelled["state"] == "REVOKED"
    time.sleep(1)
    stopped = api.job(job["id"])
    assert stopped["state"] == "REVOKED"
    assert stopped["progress"]["current"] < 200, "the task kept running after terminate"
    assert _cancel(api, job["id"])["state"] == "REVOKED", "cancelling twice is harmless"


def test_countdown_delays_the_start(api: GraphQL) -> None:
    before = datetime.now(UTC)
    job = _report(api, {"userId": 2, "steps": 1, "stepDelay": 0}, {"countdown": 1})
    done = api.wait_done(job["id"])
    started = datetime.fromisoformat(done["startedAt"])
    assert started - before >= timedelta(seconds=0.9)


def test_eta_and_priority_and_queue_are_honoured(api: GraphQL) -> None:
    eta = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    job = _report(
        api,
        {"userId": 3, "steps": 1, "stepDelay": 0},
        {"eta": eta, "priority": 0, "queue": "reports"},
    )
    assert job["queue"] == "reports"
    done = api.wait_done(job["id"])
    assert done["state"] == "SUCCESS"
    assert datetime.fromisoformat(done["startedAt"]) >= datetime.fromisoformat(eta)


def test_an_expired_job_is_revoked_as_expired(api: GraphQL) -> None:
    expires = (datetime.now(UTC) + timedelta(seconds=0.5)).isoformat()
    job = _report(
        api, {"userId": 4, "steps": 1, "stepDelay": 0}, {"countdown": 1.5, "expires": expires}
    )
    done = api.wait_done(job["id"])
    assert done["state"] == "REVOKED"
    assert done["error"]["type"] == "Expired"
    assert done["startedAt"] is None


def test_the_same_idempotency_key_returns_the_same_job(api: GraphQL) -> None:
    key = f"order-{uuid.uuid4()}"
    data = {"userId": 5, "steps": 1, "stepDelay": 0}

    first = _report(api, data, {"idempotencyKey": key})
    second = _report(api, data, {"idempotencyKey": key})
    api.wait_done(first["id"])
    third = _report(api, data, {"idempotencyKey": key})

    assert first["id"] == second["id"] == third["id"]
    assert third["state"] == "SUCCESS"
    listed = api.data("{ jobs(first: 10) { nodes { id } } }")["jobs"]["nodes"]
    assert [n["id"] for n in listed].count(first["id"]) == 1

    other = api.error(REPORT % "id", {"i": {**data, "userId": 6}, "o": {"idempotencyKey": key}})
    assert other["extensions"]["code"] == "BAD_USER_INPUT"
    assert other["extensions"]["fields"][0]["path"] == "options.idempotencyKey"


def test_retry_job_starts_a_new_job_with_the_same_input(api: GraphQL) -> None:
    failed = api.data(
        'mutation { sendEmail(input: {to: "x@y.invalid", subject: "s", body: "b"}) { id } }'
    )["sendEmail"]
    api.wait_done(failed["id"])

    retried = api.data(
        f"mutation($id: ID!) {{ retryJob(id: $id) {{ {JOB_FIELDS} }} }}", {"id": failed["id"]}
    )["retryJob"]

    assert retried["id"] != failed["id"]
    assert retried["task"] == "send_email"
    assert retried["input"] == api.job(failed["id"])["input"]
    assert api.wait_done(retried["id"])["state"] == "FAILURE"


def test_retry_of_a_running_job_is_refused(api: GraphQL) -> None:
    job = _report(api, {"userId": 1, "steps": 20, "stepDelay": 0.05})
    error = api.error("mutation($id: ID!) { retryJob(id: $id) { id } }", {"id": job["id"]})
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    api.wait_done(job["id"])
