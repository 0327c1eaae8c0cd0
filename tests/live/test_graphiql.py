"""GraphiQL in a real browser with the network closed: JobQL serves every file the page needs,
the README's tour is the first tab, the Explorer is there, and a token typed in the Headers
tab authenticates a mutation over HTTP and a subscription over graphql-ws."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from devtools.valkey import EmbeddedValkey
from gql.http.graphiql import CSP
from tests.conftest import running_api, service_env
from tests.support.browser import Page, browser_page

pytestmark = [pytest.mark.slow, pytest.mark.browser]
SECRET = secrets.token_urlsafe(48)
QUERY_EDITOR = "document.querySelector('.graphiql-query-editor .CodeMirror').CodeMirror"
HEADERS_EDITOR = (
    "document.querySelectorAll('.graphiql-editor-tool .graphiql-editor')[1]"
    ".querySelector('.CodeMirror').CodeMirror"
)
RESPONSE = "document.querySelector('.graphiql-response .CodeMirror').CodeMirror.getValue()"
RUN = "document.querySelector('.graphiql-execute-button').click()"
REFETCH_SCHEMA = "document.querySelector('[aria-label=\"Re-fetch GraphQL schema\"]').click()"
REPORT = "mutation { generateReport(input: {userId: 5, steps: 5, stepDelay: 0.2}) { id } }"


async def run(page: Page, operation: str) -> None:
    """Type an operation in the query editor and press the run button."""
    await page.evaluate(f"{QUERY_EDITOR}.setValue({json.dumps(operation)})")
    await asyncio.sleep(0.5)  # GraphiQL reads the operation's name after an edit
    await page.evaluate(RUN)


@pytest.fixture(scope="module")
def secured(valkey: EmbeddedValkey, data_dir: Path, worker: Any) -> Iterator[str]:
    env = service_env(valkey.url, data_dir, JOBQL_AUTH_MODE="jwt", JOBQL_JWT_SECRET=SECRET)
    with running_api(env, data_dir) as api:
        yield api.base_url


def token(sub: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


async def test_the_page_and_its_assets_come_from_jobql_under_a_strict_csp(secured: str) -> None:
    async with httpx.AsyncClient(base_url=secured) as http:
        page = await http.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
        assert "http" not in page.text.replace('lang="en"', ""), "no absolute URL: no CDN"
        script = await http.get("/graphiql/graphiql.min.js")
        assert script.status_code == 200 and "javascript" in script.headers["content-type"]


async def test_graphiql_runs_a_mutation_then_a_subscription_to_success(
    secured: str, tmp_path: Path
) -> None:
    async with browser_page(tmp_path / "profile") as page:
        offline = "fetch('https://unpkg.com/').then(() => 'reached', () => 'blocked')"
        assert await page.evaluate(offline) == "blocked", "the browser's network is closed"

        await page.send("Page.navigate", url=f"{secured}/graphql")
        await page.wait_for("!!document.querySelector('.graphiql-query-editor .CodeMirror')")
        tour = await page.evaluate(f"{QUERY_EDITOR}.getValue()")
        assert "mutation StartReport" in tour and "subscription WatchJob" in tour
        assert await page.evaluate(
            "!!document.querySelector('[aria-label=\"Show GraphiQL Explorer\"]')"
        ), "the Explorer plugin is in the sidebar"

        bearer = json.dumps({"Authorization": f"Bearer {token('graphiql-user')}"})
        await page.evaluate(f"{HEADERS_EDITOR}.setValue({json.dumps(bearer)})")
        await asyncio.sleep(0.5)
        await page.evaluate(REFETCH_SCHEMA)  # the schema, now with the token
        await run(page, REPORT)
        answer = await page.wait_for(f"{RESPONSE}.includes('generateReport') && {RESPONSE}")
        job_id = json.loads(answer)["data"]["generateReport"]["id"]

        watch = f'subscription {{ job(id: "{job_id}") {{ id state progress {{ percent }} }} }}'
        await run(page, watch)
        await page.wait_for(f"{RESPONSE}.includes('PROGRESS')")
        await page.wait_for(f"{RESPONSE}.includes('SUCCESS')")
        shown = json.loads(await page.evaluate(RESPONSE))
        assert shown["data"]["job"] == {
            "id": job_id,
            "state": "SUCCESS",
            "progress": {"percent": 100.0},
        }

        screenshot = tmp_path / "graphiql.png"
        screenshot.write_bytes(await page.screenshot())
        print(f"GraphiQL screenshot: {screenshot}")  # noqa: T201 (the artifact's path)

        # Nothing but JobQL (and inline fonts) was asked for; nothing was refused by the CSP.
        requested = page.requested_urls()[1:]  # after the probe of the closed network
        assert requested and all(u.startswith((secured, "data:")) for u in requested), requested
        problems = [
            e["params"]
            for e in page.events
            if e.get("method") == "Runtime.exceptionThrown"
            or "Content Security Policy" in json.dumps(e.get("params"))
        ]
        assert problems == [], problems
