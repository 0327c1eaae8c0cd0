"""A frontend enqueues each example task and reads it to the end, over real HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import JOB_FIELDS, GraphQL

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [
    pytest.mark.contract,
    pytest.mark.django_results,
    pytest.mark.rabbitmq,
    pytest.mark.postgres,
]

EXAMPLES = [
    (
        "generateReport",
        "GenerateReportInput",
        "generate_report",
        {"userId": 7, "steps": 3, "stepDelay": 0.01},
        {"userId": 7, "reportUrl": "/reports/7.pdf"},
    ),
    (
        "processData",
        "ProcessDataInput",
        "process_data",
        {"data": {"rows": [1, 2, 3]}, "delay": 0},
        {"processed": {"rows": [1, 2, 3]}, "status": "complete"},
    ),
    (
        "processDataAsync",
        "ProcessDataInput",
        "process_data_async",
        {"data": "hello", "delay": 0.05},
        None,
    ),
    (
        "sendEmail",
        "SendEmailInput",
        "send_email",
        {"to": "ada@example.com", "subject": "Hi", "body": "Hello"},
        None,
    ),
]


def _typed(
    api: GraphQL, mutation: str, input_type: str, data: dict[str, object]
) -> dict[str, object]:
    query = f"mutation($i: {input_type}!) {{ {mutation}(input: $i) {{ {JOB_FIELDS} }} }}"
    return api.data(query, {"i": data})[mutation]


def _generic(api: GraphQL, task: str, data: dict[str, object]) -> dict[str, object]:
    query = (
        f"mutation($t: String!, $i: JSON!) {{ enqueue(task: $t, input: $i) {{ {JOB_FIELDS} }} }}"
    )
    return api.data(query, {"t": task, "i": data})["enqueue"]


@pytest.mark.parametrize("how", ["typed", "enqueue"])
@pytest.mark.parametrize(("mutation", "input_type", "task", "data", "result"), EXAMPLES)
def test_each_example_task_runs_to_success(
    api: GraphQL,
    how: str,
    mutation: str,
    input_type: str,
    task: str,
    data: dict[str, object],
    result: object,
) -> None:
    job = _typed(api, mutation, input_type, data) if how == "typed" else _generic(api, task, data)
    assert job["state"] == "PENDING" and job["sequence"] == 0 and not job["done"]
    assert job["task"] == task and job["queue"] == "jobql"
    assert isinstance(job["input"], dict) and data.items() <= job["input"].items()

    done = api.wait_done(str(job["id"]))

    assert done["state"] == "SUCCESS", done
    assert done["error"] is None and done["done"] is True
    assert done["startedAt"] and done["finishedAt"] and done["createdAt"] == job["createdAt"]
    if result is not None:
        assert done["result"] == result


def test_progress_is_visible_while_the_report_runs(api: GraphQL) -> None:
    job = _typed(
        api, "generateReport", "GenerateReportInput", {"userId": 1, "steps": 40, "stepDelay": 0.05}
    )

    running = api.wait(str(job["id"]), lambda j: j["state"] == "PROGRESS")

    progress = running["progress"]
    assert progress["total"] == 40 and 0 < progress["current"] < 40
    assert 0 < progress["percent"] < 100
    assert progress["message"].startswith("step ")
    done = api.wait_done(str(job["id"]))
    assert done["progress"]["percent"] == 100
    # enqueue, start, 40 progress reports, success: one sequence step per change
    assert done["sequence"] == 42


def test_defaults_are_applied_and_shown_in_input(api: GraphQL) -> None:
    job = _typed(api, "generateReport", "GenerateReportInput", {"userId": 3, "stepDelay": 0})
    assert job["input"] == {"userId": 3, "steps": 100, "stepDelay": 0.0, "logEvery": 0}
    assert api.wait_done(str(job["id"]))["state"] == "SUCCESS"


def test_the_async_task_is_awaited_as_a_coroutine(api: GraphQL) -> None:
    job = _typed(api, "processDataAsync", "ProcessDataInput", {"data": [1], "delay": 0.2})
    done = api.wait_done(str(job["id"]))
    assert done["result"]["async"] is True
    assert done["result"]["processed"] == [1]
    # The body ran inside an asyncio task on the worker's loop, not as an un-awaited coroutine.
    assert done["result"]["coroutine"].startswith("Task-")
    assert done["progress"]["message"] == "done"


def test_send_email_retries_a_transient_error_then_succeeds(api: GraphQL, outbox: Path) -> None:
    data = {
        "to": "bob@example.com",
        "subject": "Retry",
        "body": "b",
        "simulateTransientFailures": 2,
    }
    job = _typed(api, "sendEmail", "SendEmailInput", data)

    done = api.wait_done(str(job["id"]), timeout=60)

    assert done["state"] == "SUCCESS"
    assert done["retries"] == 2
    assert done["result"]["attempts"] == 3
    assert (outbox / f"{job['id']}.eml").read_text().count("Subject: Retry") == 1


def test_send_email_to_the_invalid_domain_fails_without_retrying(api: GraphQL) -> None:
    job = _typed(
        api,
        "sendEmail",
        "SendEmailInput",
        {"to": "eve@nowhere.invalid", "subject": "s", "body": "b"},
    )

    done = api.wait_done(str(job["id"]))

    assert done["state"] == "FAILURE"
    assert done["retries"] == 0
    assert done["error"]["type"] == "PermanentEmailError"
    assert "nowhere.invalid" in done["error"]["message"]
    assert done["result"] is None


def test_a_task_written_the_usual_celery_way_shows_its_progress(api: GraphQL) -> None:
    job = _generic(api, "native.countdown", {"n": 20, "delay": 0.05})

    running = api.wait(str(job["id"]), lambda j: j["state"] == "PROGRESS")
    assert running["progress"]["total"] == 20
    assert running["progress"]["message"] == "counting"

    done = api.wait_done(str(job["id"]))
    assert done["state"] == "SUCCESS" and done["result"] == {"counted": 20}
    assert done["progress"]["current"] == 20


def test_a_job_sent_with_plain_celery_is_readable_too(api: GraphQL, settings: object) -> None:
    from tasks.core.app import create_celery_app

    producer = create_celery_app(settings, producer=True)  # type: ignore[arg-type]
    sent = producer.send_task("native.countdown", kwargs={"n": 2, "delay": 0}, queue="jobql")
    producer.close()

    done = api.wait_done(sent.id)

    assert done["task"] == "native.countdown" and done["state"] == "SUCCESS"
    assert done["input"] == {"n": 2, "delay": 0}


def test_an_unknown_id_is_null_not_pending(api: GraphQL) -> None:
    assert api.job("00000000-0000-0000-0000-000000000000") is None
