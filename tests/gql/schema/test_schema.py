"""The published contract: SDL in sync with the code, tasks described, health reported."""

from __future__ import annotations

import pytest
from graphql import (
    GraphQLArgument,
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLObjectType,
    GraphQLSchema,
    build_schema,
    is_specified_scalar_type,
    print_ast,
)

from gql.export import sdl
from tests.conftest import ROOT, GraphQL

# The passes of `make test` that run this module again (tests/conftest.py).
pytestmark = [pytest.mark.contract]


def test_schema_graphql_is_in_sync_with_the_code() -> None:
    checked_in = (ROOT / "schema.graphql").read_text()
    assert sdl() == checked_in, "schema.graphql is stale: run `make schema` and commit it"


def _signatures(schema: GraphQLSchema) -> set[str]:
    """Every root field as ``name(arg: Type = default, ...): Type``, descriptions left out."""
    found = set()
    for root in (schema.query_type, schema.mutation_type, schema.subscription_type):
        assert root is not None
        for name, field in root.fields.items():
            args = ", ".join(
                f"{arg_name}: {arg.type}{_default(arg)}" for arg_name, arg in field.args.items()
            )
            found.add(f"{name}({args}): {field.type}" if args else f"{name}: {field.type}")
    return found


def _default(arg: GraphQLArgument) -> str:
    node = arg.ast_node.default_value if arg.ast_node else None
    return f" = {print_ast(node)}" if node else ""


def test_the_contract_names_are_present() -> None:
    text = sdl()
    signatures = _signatures(build_schema(text))
    for name in ("enum JobState", "type Job {", "input EnqueueOptions", "input JobFilter"):
        assert name in text, name
    assert "scalar Email" in text
    for signature in (
        "enqueue(task: String!, input: JSON! = {  }, options: EnqueueOptions = null): Job!",
        "generateReport(input: GenerateReportInput!, options: EnqueueOptions = null): Job!",
        "sendEmail(input: SendEmailInput!, options: EnqueueOptions = null): Job!",
        "processDataAsync(input: ProcessDataInput!, options: EnqueueOptions = null): Job!",
        "cancelJob(id: ID!, terminate: Boolean = false): Job!",
        "retryJob(id: ID!): Job!",
        "jobs(first: Int = 20, after: String = null, filter: JobFilter = null): JobConnection!",
        "retryJobs(filter: JobFilter!, first: Int = null, after: String = null): RetryJobsResult!",
        "cancelJobs(filter: JobFilter!, terminate: Boolean = false, first: Int = null, "
        "after: String = null): CancelJobsResult!",
        "deadLetters(first: Int! = 20, after: String = null): DeadLetterConnection!",
        "requeueDeadLetter(id: ID!): DeadLetterRequeued!",
        "discardDeadLetter(id: ID!): DeadLetter!",
        "pauseQueue(name: String!): Queue!",
        "resumeQueue(name: String!): Queue!",
    ):
        assert signature in signatures, signature


def test_every_type_field_argument_and_value_a_client_sees_is_described() -> None:
    """Descriptions reach GraphiQL's docs and codegen's comments; none may be missing."""
    schema = build_schema(sdl())
    missing = []
    for name, kind in schema.type_map.items():
        if name.startswith("__") or is_specified_scalar_type(kind):
            continue
        if not kind.description:
            missing.append(name)
        if isinstance(kind, GraphQLEnumType):
            missing += [f"{name}.{v}" for v, value in kind.values.items() if not value.description]
        if isinstance(kind, GraphQLObjectType | GraphQLInputObjectType):
            for field_name, field in kind.fields.items():
                if not field.description:
                    missing.append(f"{name}.{field_name}")
                for arg_name, arg in getattr(field, "args", {}).items():
                    if not arg.description:
                        missing.append(f"{name}.{field_name}({arg_name})")
    assert missing == [], f"undescribed in schema.graphql: {missing}"


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
