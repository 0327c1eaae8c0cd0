"""Bad input gets a clear, coded error naming the field, and creates no job."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
import strawberry

from devtools.processes import free_port
from gql.schema.root import JobQLSchema
from tests.conftest import GraphQL, running_api, service_env

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.contract, pytest.mark.django_results, pytest.mark.rabbitmq]

BAD_INPUTS = [
    pytest.param(
        'mutation { generateReport(input: {userId: "seven"}) { id } }',
        "input.userId",
        id="wrong type",
    ),
    pytest.param(
        "mutation { generateReport(input: {userId: 1, steps: 0}) { id } }",
        "input.steps",
        id="out of range",
    ),
    pytest.param(
        "mutation { generateReport(input: {userId: 1, stepDelay: 11}) { id } }",
        "input.stepDelay",
        id="out of range float",
    ),
    pytest.param("mutation { generateReport(input: {}) { id } }", "input.userId", id="missing"),
    pytest.param(
        'mutation { enqueue(task: "generate_report", input: {steps: 2}) { id } }',
        "input.userId",
        id="missing in enqueue",
    ),
    pytest.param(
        'mutation { enqueue(task: "generate_report", input: {userId: 1, colour: "red"}) { id } }',
        "input.colour",
        id="unknown field",
    ),
    pytest.param('mutation { enqueue(task: "no_such_task") { id } }', "task", id="unknown task"),
    # The system's own tasks: the webhook delivery would send a JobQL-signed body of the
    # caller's choosing; Celery's built-ins are no job.
    pytest.param(
        'mutation { enqueue(task: "jobql.deliver_webhook",'
        ' input: {kind: "job", record: {id: "x"}, message_id: "msg_1"}) { id } }',
        "task",
        id="JobQL's internal webhook delivery",
    ),
    pytest.param(
        'mutation { enqueue(task: "celery.backend_cleanup") { id } }', "task", id="Celery's own"
    ),
    pytest.param(
        'mutation { sendEmail(input: {to: "not-an-address", subject: "s", body: "b"}) { id } }',
        "input.to",
        id="bad email",
    ),
    pytest.param(
        'mutation { enqueue(task: "process_data", input: {data: 1},'
        ' options: {queue: "nowhere"}) { id } }',
        "options.queue",
        id="unknown queue",
    ),
    pytest.param(
        'mutation { enqueue(task: "process_data", input: {data: 1},'
        ' options: {expires: "2001-01-01T00:00:00Z"}) { id } }',
        "options.expires",
        id="expired already",
    ),
    pytest.param(
        'mutation { enqueue(task: "process_data", input: {data: 1},'
        ' options: {countdown: 5, eta: "2100-01-01T00:00:00Z"}) { id } }',
        "options.eta",
        id="countdown and eta",
    ),
    pytest.param(
        'mutation { enqueue(task: "process_data", input: {data: 1},'
        " options: {priority: 42}) { id } }",
        "options.priority",
        id="priority",
    ),
    pytest.param("{ jobs(first: 5000) { edges { cursor } } }", "first", id="page too large"),
    pytest.param('{ jobs(after: "%%%") { edges { cursor } } }', "after", id="bad cursor"),
]


@pytest.mark.parametrize(("query", "field"), BAD_INPUTS)
def test_bad_input_is_bad_user_input_naming_the_field(api: GraphQL, query: str, field: str) -> None:
    newest = api.newest_job_id()

    error = api.error(query)

    assert error["extensions"]["code"] == "BAD_USER_INPUT", error
    assert field in [f["path"] for f in error["extensions"]["fields"]], error
    assert "Traceback" not in error["message"]
    assert api.newest_job_id() == newest, "a rejected request must not create a job"


def test_the_system_s_own_tasks_are_not_listed(api: GraphQL) -> None:
    names = [task["name"] for task in api.data("{ tasks { name } }")["tasks"]]
    assert "process_data" in names
    assert not [name for name in names if name.startswith(("jobql.", "celery."))], names


def test_a_wrong_variable_names_the_variable_path(api: GraphQL) -> None:
    query = "mutation($i: GenerateReportInput!) { generateReport(input: $i) { id } }"
    error = api.error(query, {"i": {"userId": "x"}})
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert error["extensions"]["fields"][0]["path"] == "$i.userId"


def test_malformed_json_is_http_400(api: GraphQL) -> None:
    newest = api.newest_job_id()
    response = api.http.post(
        "/graphql", content=b'{"query": "mutation {', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert api.newest_job_id() == newest


def test_a_syntax_error_is_a_parse_failure(api: GraphQL) -> None:
    assert api.error("{ job(id: ")["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"


def test_an_unknown_field_is_a_validation_failure(api: GraphQL) -> None:
    assert api.error("{ nope }")["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


def test_cancel_of_an_unknown_job_is_not_found(api: GraphQL) -> None:
    error = api.error('mutation { cancelJob(id: "missing") { id } }')
    assert error["extensions"]["code"] == "NOT_FOUND"


async def test_unexpected_errors_are_masked_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    @strawberry.type
    class Query:
        @strawberry.field
        def boom(self) -> str:
            raise RuntimeError("secret detail at /srv/app.py line 3")

    @strawberry.type
    class Subscription:
        @strawberry.subscription
        async def booms(self) -> AsyncGenerator[str, None]:
            yield "fine"
            raise RuntimeError("secret stream detail")

    schema = JobQLSchema(query=Query, subscription=Subscription)
    query_result = await schema.execute("{ boom }")
    stream = await schema.subscribe("subscription { booms }")
    fine, failed = [result async for result in stream]  # type: ignore[union-attr]

    assert fine.errors is None
    for result in (query_result, failed):
        assert result.errors is not None
        error = result.errors[0].formatted
        assert error["message"] == "Internal server error."
        assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    # Logged once each on the server, with its traceback.
    assert "secret detail" in caplog.text
    assert "secret stream detail" in caplog.text
    assert "Traceback" in caplog.text


def _assert_fast_unavailable(client: GraphQL) -> None:
    started = time.monotonic()
    error = client.error(
        'mutation { enqueue(task: "process_data", input: {data: 1, delay: 0}) { id } }'
    )
    elapsed = time.monotonic() - started
    assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE", error
    assert "127.0.0.1" not in error["message"]
    # A guard against a hang, not a speed claim: the bound is Celery's or redis-py's timeout.
    assert elapsed < 10, elapsed


@pytest.mark.slow
def test_broker_down_is_service_unavailable_and_leaves_no_job(
    api: GraphQL, valkey: object, data_dir: Path
) -> None:
    newest = api.newest_job_id()
    env = service_env(
        valkey.url,  # type: ignore[attr-defined]
        data_dir,
        JOBQL_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    with running_api(env, data_dir) as no_broker:
        _assert_fast_unavailable(no_broker)
        ready = no_broker.http.get("/health/ready")
        assert ready.status_code == 503
    assert api.newest_job_id() == newest, "the record of the unsent job must be removed"


@pytest.mark.slow
def test_redis_down_is_service_unavailable(data_dir: Path) -> None:
    env = service_env(f"redis://127.0.0.1:{free_port()}/0", data_dir)
    with running_api(env, data_dir) as no_redis:
        _assert_fast_unavailable(no_redis)
        error = no_redis.error('{ job(id: "x") { id } }')
        assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        for schedules in (
            "{ schedules { id } }",
            'mutation { createSchedule(name: "n", task: "process_data", input: {data: 1}, '
            "timing: {interval: 60}) { id } }",
        ):
            error = no_redis.error(schedules)
            assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE", error
        health = no_redis.data("{ health { ok resultBackend { ok error } } }")["health"]
        assert health["ok"] is False and health["resultBackend"]["ok"] is False
