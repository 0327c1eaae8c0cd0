"""JobQL as a frontend team sees it: Apollo Client (in Node.js) against a real service with
authentication on, and TypeScript types generated from ``schema.graphql`` by graphql-codegen.

The Node.js side is ``tests/e2e``: the packages come from its lock file; the client setup and
the React progress bar it runs are the ones the README's Frontend section shows.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from devtools.valkey import EmbeddedValkey
from tests.conftest import ROOT, running_api, service_env
from tests.support.node import E2E, node, node_packages

pytestmark = pytest.mark.slow
SECRET = secrets.token_urlsafe(48)
ISO_WITH_ZONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture(scope="module")
def secured_url(valkey: EmbeddedValkey, data_dir: Path, worker: Any) -> Iterator[str]:
    env = service_env(valkey.url, data_dir, JOBQL_AUTH_MODE="jwt", JOBQL_JWT_SECRET=SECRET)
    with running_api(env, data_dir) as api:
        yield f"{api.base_url}/graphql"


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


def test_apollo_client_queries_mutates_watches_and_caches_jobs(secured_url: str) -> None:
    env = {**os.environ, "JOBQL_URL": secured_url, "JOBQL_TOKEN": token("frontend")}
    seen = json.loads(node("apollo.e2e.mjs", env=env))

    assert {"generate_report", "process_data", "send_email"} <= set(seen["tasks"])
    assert seen["generateReport"]["state"] == "PENDING"
    assert ISO_WITH_ZONE.match(seen["generateReport"]["createdAt"]), seen["generateReport"]
    assert ISO_WITH_ZONE.match(seen["finishedAt"])
    # graphql-ws with the token in connection_init: snapshot first, SUCCESS last.
    assert seen["graphqlWs"][-1] == "SUCCESS" and "PROGRESS" in seen["graphqlWs"], seen
    assert seen["result"]["userId"] == 7
    # The subscription's updates reached the query's cached Job:<id>, with no refetch.
    assert seen["cachedState"] == "SUCCESS" and seen["watchedQuery"][-1] == "SUCCESS", seen
    # Generic enqueue, watched over multipart HTTP; JSON round-trips object, array, numbers.
    assert seen["enqueue"] == "PENDING" and seen["multipart"][-1] == "SUCCESS", seen
    assert seen["multipartResult"]["processed"] == {"values": [1, 2.5, "x"]}
    assert seen["badInput"]["combined"] and seen["badInput"]["code"] == "BAD_USER_INPUT"
    # APQ: hashed GET, miss, full query, then a new client by hash alone.
    assert seen["apq"]["answered"]
    assert [(r["method"], r["hasQuery"]) for r in seen["apq"]["requests"]] == [
        ("GET", False),
        ("POST", True),
        ("GET", False),
    ], seen["apq"]
    assert seen["batch"] == {"posts": 1, "tasks": len(seen["tasks"]), "job": "SUCCESS"}
    # The README's React progress bar: it moved, then showed SUCCESS at 100 %.
    assert seen["react"][-1] == {"text": "SUCCESS 100%", "value": 100}, seen["react"]
    assert len(seen["react"]) >= 3, seen["react"]
    assert seen["refused"] == 4403, "graphql-ws without a token is refused at connection_init"


def test_codegen_types_the_operations_from_schema_graphql_without_warnings() -> None:
    node_packages()
    run = subprocess.run(
        ["npx", "--no-install", "graphql-codegen", "--config", "codegen.yml", "--silent"],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    assert "warn" not in (run.stderr + run.stdout).lower(), run.stderr + run.stdout
    generated = (E2E / "generated" / "operations.ts").read_text()
    assert "export type GenerateReportMutation = " in generated
    assert "export type JobUpdatesSubscription = " in generated
    # Descriptions reach the generated code as doc comments.
    assert "/** Current state. */" in generated


def test_the_docs_show_the_code_the_suite_runs() -> None:
    page = (ROOT / "docs" / "guide" / "frontend.md").read_text()
    for source in ("src/apollo.mjs", "src/progress.mjs"):
        assert (E2E / source).read_text().strip() in page, f"the Frontend page lacks {source}"
