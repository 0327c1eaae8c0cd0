"""The published contract: SDL in sync with the code, tasks described, health reported."""

from __future__ import annotations

from gql.export import sdl
from tests.conftest import ROOT, GraphQL


def test_schema_graphql_is_in_sync_with_the_code() -> None:
    checked_in = (ROOT / "schema.graphql").read_text()
    assert sdl() == checked_in, "schema.graphql is stale: run `make schema` and commit it"


def test_the_contract_names_are_present() -> None:
    text = sdl()
    for name in (
        "enum JobState",
        "type Job {",
        "input EnqueueOptions",
        "input JobFilter",
        "enqueue(",
        "generateReport(input: GenerateReportInput!, options: EnqueueOptions",
        "sendEmail(input: SendEmailInput!",
        "processDataAsync(",
        "cancelJob(id: ID!, terminate: Boolean = false): Job!",
        "retryJob(id: ID!): Job!",
        "jobs(first: Int = 20, after: String = null, filter: JobFilter = null): JobConnection!",
        "scalar Email",
    ):
        assert name in text, name


def test_tasks_lists_every_task_with_its_json_schema(api: GraphQL) -> None:
    tasks = api.data(
        "{ tasks { name typed mutation inputSchema queue description limits { maxRetries } } }"
    )["tasks"]
    by_name = {t["name"]: t for t in tasks}

    assert {"generate_report", "process_data", "process_data_async", "send_email"} <= set(by_name)
    report = by_name["generate_report"]
    assert report["mutation"] == "generateReport" and report["typed"]
    steps = report["inputSchema"]["properties"]["steps"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (1, 10_000, 100)
    assert report["inputSchema"]["required"] == ["userId"]
    assert by_name["send_email"]["limits"]["maxRetries"] == 5
    native = by_name["native.countdown"]
    assert native["typed"] is False and native["mutation"] is None


def test_health_reports_every_component_and_the_worker(api: GraphQL) -> None:
    health = api.data(
        "{ health { ok workers broker { ok latencyMs } resultBackend { ok } broadcast { ok } } }"
    )["health"]
    assert health["ok"] is True
    assert health["broker"]["ok"] and health["broker"]["latencyMs"] > 0
    assert health["resultBackend"]["ok"] and health["broadcast"]["ok"]
    assert len(health["workers"]) == 1
    assert api.http.get("/health/live").json() == {"status": "ok"}
    assert api.http.get("/health/ready").status_code == 200


def test_graphiql_is_served_at_graphql(api: GraphQL) -> None:
    page = api.http.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200 and "graphiql" in page.text.lower()


def test_env_example_holds_placeholders_only() -> None:
    text = (ROOT / ".env.example").read_text()
    for line in text.splitlines():
        if "://" in line and "@" in line:
            assert "_your_key_here@" in line, line
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "!.env.example" in ignored
