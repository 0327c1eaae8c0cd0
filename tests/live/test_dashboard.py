"""The dashboard in a real browser (Playwright driving Debian's headless Chromium, network
closed), against a real API, worker and Valkey, with API keys and trusted documents enforced:
the dashboard's own manifest is all that lets its operations run. Each test is one thing a
person does with it; screenshots of every screen go to ``var/dashboard/``, and the figures a
person feels (time to the first usable screen, a thousand jobs kept live) to
``var/dashboard/figures.json``. Figures are reported, never asserted against a clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from devtools.valkey import EmbeddedValkey
from gql.http.graphiql import CSP
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import ROOT, running_api, running_worker, service_env
from tests.support.browser import CLOSED_NETWORK, chromium

pytestmark = pytest.mark.browser
KEYS = {owner: secrets.token_urlsafe(24) for owner in ("ops", "alice", "bob")}
SHOTS = ROOT / "var" / "dashboard"
FIGURES = SHOTS / "figures.json"
WORKER = "dash-w1"
CONSOLE: weakref.WeakKeyDictionary[Page, list[str]] = weakref.WeakKeyDictionary()
WAIT = 30_000  # ms: what a person would wait before calling it broken
expect.set_options(timeout=WAIT)


@dataclass
class Stack:
    url: str  # the API the browser uses: trusted documents enforced
    setup_url: str  # a second replica, without them, for what the tests set up themselves
    env: dict[str, str]
    settings: Settings
    data_dir: Path

    def data(self, owner: str, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.setup_url}/graphql",
            json={"query": query, "variables": variables},
            headers={"Authorization": f"ApiKey {KEYS[owner]}"},
            timeout=30,
        )
        body = response.json()
        assert "errors" not in body, body
        return dict(body["data"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API keys for alice, bob and the admin ops. The browser's API enforces trusted
    documents with an empty deployment manifest: only the dashboard's own lets anything run."""
    data_dir = tmp_path_factory.mktemp("dashboard")
    empty = data_dir / "trusted.json"
    empty.write_text(json.dumps({"format": "apollo-persisted-query-manifest", "version": 1,
                                 "operations": []}))  # fmt: skip
    server = EmbeddedValkey(data_dir / "valkey").start()
    keys = {hashlib.sha256(key.encode()).hexdigest(): owner for owner, key in KEYS.items()}
    env = service_env(
        server.url,
        data_dir,
        JOBQL_AUTH_MODE="api_key",
        JOBQL_API_KEYS=json.dumps(keys),
        JOBQL_ADMIN_OWNERS='["ops"]',
        JOBQL_EXTRA_QUEUES='["reports", "side"]',
        JOBQL_WORKER_HEARTBEAT_INTERVAL="0.5",
        JOBQL_INSPECT_CACHE_SECONDS="0.2",
    )
    settings = Settings(redis_url=server.url, data_dir=data_dir, extra_queues=("reports", "side"),
                        env="test")  # fmt: skip
    try:
        queues = ("jobql", "reports", "jobql.webhooks")
        trusted = {**env, "JOBQL_TRUSTED_DOCUMENTS": str(empty)}
        with (
            running_worker(env, data_dir, settings, queues=queues, name=WORKER),
            running_api(trusted, data_dir) as api,
            running_api(env, data_dir) as setup,
        ):
            yield Stack(api.base_url, setup.base_url, env, settings, data_dir)
    finally:
        server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", *CLOSED_NETWORK]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def new_tab(browser: Browser) -> Page:
    """A tab whose script errors and console errors are kept (CSP violations among them)."""
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(WAIT)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    CONSOLE[page] = errors
    return page


async def signed_in(browser: Browser, stack: Stack, owner: str) -> Page:
    """A new tab that opened the dashboard and signed in with ``owner``'s API key."""
    page = await new_tab(browser)
    await page.goto(f"{stack.url}/dashboard")
    await page.get_by_test_id("signin-credential").fill(KEYS[owner])
    await page.get_by_test_id("signin-submit").click()
    await expect(page.get_by_test_id("viewer-owner")).to_contain_text(owner)
    return page


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SHOTS / f"{name}.png")


def record_figure(name: str, value: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    figures = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    figures[name] = value
    FIGURES.write_text(json.dumps(figures, indent=2) + "\n")


def no_csp_violations(page: Page) -> None:
    errors = CONSOLE.get(page, [])
    assert not [e for e in errors if "Content Security Policy" in e], errors


async def test_the_page_is_served_whole_by_the_api_under_the_strict_csp(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.url) as http:
        bare = await http.get("/dashboard")
        assert bare.status_code == 308 and bare.headers["location"] == "dashboard/"
        page = await http.get("/dashboard/")
        assert page.status_code == 200 and page.headers["content-security-policy"] == CSP
        assets = re.findall(r'(?:src|href)="\./(assets/[^"]+)"', page.text)
        assert assets and "http" not in page.text.replace('lang="en"', ""), "no CDN"
        for asset in assets:
            assert (await http.get(f"/dashboard/{asset}")).status_code == 200, asset


async def test_an_owner_signs_in_starts_a_job_and_watches_it_to_the_end(
    stack: Stack, browser: Browser
) -> None:
    page = await new_tab(browser)
    await page.goto(f"{stack.url}/dashboard")
    await shot(page, "sign-in")
    await page.get_by_test_id("signin-credential").fill(KEYS["alice"])
    started = await page.evaluate("performance.now()")
    await page.get_by_test_id("signin-submit").click()
    await page.wait_for_selector("body[data-ready='1']")
    ready = await page.evaluate("performance.now()")
    first_load = await page.evaluate(
        "performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd"
    )
    record_figure("sign-in to first usable screen (ms)", round(ready - started))
    record_figure("page load to DOMContentLoaded (ms)", round(first_load))
    await expect(page.get_by_test_id("viewer-owner")).to_contain_text("alice")

    await page.get_by_test_id("new-job-task").select_option("generate_report")
    await page.get_by_test_id("new-job-field-userId").fill("7")
    await page.get_by_test_id("new-job-field-steps").fill("10")
    await page.get_by_test_id("new-job-field-stepDelay").fill("0.2")
    await page.get_by_test_id("new-job-field-logEvery").fill("2")
    await page.get_by_test_id("new-job-submit").click()

    await expect(page.get_by_test_id("job-progress")).to_have_attribute("data-percent", "100")
    await expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "SUCCESS")
    await expect(page.get_by_test_id("job-log-line")).to_have_count(5)
    await expect(page.get_by_test_id("job-log-line").first).to_contain_text("step 2 of 10")
    assert await page.get_by_test_id("job-event").count() >= 3
    await shot(page, "job")
    job_id = page.url.rsplit("/", 1)[-1]
    assert stack.data("alice", "query($id: ID!) { job(id: $id) { state } }", id=job_id) == {
        "job": {"state": "SUCCESS"}
    }
    no_csp_violations(page)


async def test_a_job_scheduled_for_later_is_cancelled_from_its_page(
    stack: Stack, browser: Browser
) -> None:
    later = stack.data(
        "alice",
        "mutation { processData(input: {data: {a: 1}}, options: {countdown: 300}) { id } }",
    )["processData"]["id"]
    page = await signed_in(browser, stack, "alice")
    await page.goto(f"{stack.url}/dashboard/#/jobs/{later}")
    await expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "PENDING")
    await page.get_by_test_id("job-cancel").click()
    await expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "REVOKED")
    read = "query($id: ID!) { job(id: $id) { state } }"
    assert stack.data("alice", read, id=later)["job"]["state"] == "REVOKED"


async def test_failed_jobs_are_retried_in_bulk_from_the_list(
    stack: Stack, browser: Browser
) -> None:
    send = (
        'mutation { sendEmail(input: {to: "eve@nowhere.invalid", subject: "s", body: "b"}) { id } }'
    )
    failed = [stack.data("bob", send)["sendEmail"]["id"] for _ in range(3)]
    page = await signed_in(browser, stack, "bob")
    await page.get_by_test_id("filter-state-FAILURE").check()
    for job_id in failed:
        row = page.get_by_test_id(f"job-row-{job_id}")
        await expect(row).to_have_attribute("data-state", "FAILURE")
        await page.get_by_test_id(f"job-select-{job_id}").check()
    await shot(page, "jobs")
    await page.get_by_test_id("bulk-retry").click()

    read = "query($id: ID!) { job(id: $id) { state retries } }"

    def retried() -> int:
        listing = stack.data("bob", "{ jobs(first: 50) { edges { node { id task } } } }")
        return len(listing["jobs"]["edges"]) - len(failed)

    deadline = time.monotonic() + 30
    while retried() < len(failed):
        assert time.monotonic() < deadline, "the bulk retry made no new jobs"
        await asyncio.sleep(0.2)
    assert retried() == len(failed), "each failed job retried once"
    assert all(stack.data("bob", read, id=j)["job"]["state"] == "FAILURE" for j in failed)


async def test_an_admin_pauses_a_queue_and_a_job_on_it_waits_until_resumed(
    stack: Stack, browser: Browser
) -> None:
    page = await signed_in(browser, stack, "ops")
    await page.get_by_test_id("nav-workers").click()
    await page.get_by_test_id("queue-pause-reports").click()
    await expect(page.get_by_test_id("queue-row-reports")).to_have_attribute("data-paused", "true")
    try:
        waiting = stack.data(
            "alice",
            'mutation { processData(input: {data: 1}, options: {queue: "reports"}) { id } }',
        )["processData"]["id"]
        await page.goto(f"{stack.url}/dashboard/#/jobs/{waiting}")
        await page.wait_for_timeout(2000)
        await expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "PENDING")
        await page.goto(f"{stack.url}/dashboard/#/workers")
        await shot(page, "workers")
    finally:
        await page.get_by_test_id("queue-resume-reports").click()
    await expect(page.get_by_test_id("queue-row-reports")).to_have_attribute("data-paused", "false")
    await page.goto(f"{stack.url}/dashboard/#/jobs/{waiting}")
    await expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "SUCCESS")


async def test_a_dead_letter_is_requeued_and_then_runs(stack: Stack, browser: Browser) -> None:
    # A worker of an older release, without the task, sets the job's message aside.
    old_env = {**stack.env, "JOBQL_TASK_MODULES": '["tasks.examples"]'}
    with running_worker(old_env, stack.data_dir, stack.settings, queues=("side",), concurrency=1):
        job_id = stack.data(
            "alice",
            'mutation { enqueue(task: "native.countdown", input: {n: 1, delay: 0}, '
            'options: {queue: "side"}) { id } }',
        )["enqueue"]["id"]
        page = await signed_in(browser, stack, "alice")
        await page.get_by_test_id("nav-dead-letters").click()
        letter = page.locator("[data-testid^='dead-letter-requeue-']")
        await expect(letter).to_have_count(1)
    await shot(page, "dead-letters")
    # The release with the task is deployed: the main worker takes "side" too.
    control = create_celery_app(stack.settings, producer=True).control
    here = [f"{WORKER}@{socket.gethostname()}"]
    control.add_consumer("side", destination=here, reply=True, timeout=5)
    try:
        await letter.click()
        await expect(letter).to_have_count(0)
        # A recorded job's requeue is its one retry, which retryJob names.
        again = "mutation($id: ID!) { retryJob(id: $id) { id } }"
        rerun = stack.data("alice", again, id=job_id)["retryJob"]["id"]
        await page.goto(f"{stack.url}/dashboard/#/jobs/{rerun}")
        await expect(page.get_by_test_id("job-state")).to_have_attribute("data-state", "SUCCESS")
    finally:
        control.cancel_consumer("side", destination=here, reply=True, timeout=5)
        control.app.close()


async def test_a_second_owner_sees_none_of_the_first_owners_jobs(
    stack: Stack, browser: Browser
) -> None:
    alices = stack.data("alice", "mutation { processData(input: {data: 2}) { id } }")
    job_id = alices["processData"]["id"]
    bobs = stack.data("bob", "mutation { processData(input: {data: 3}) { id } }")
    page = await signed_in(browser, stack, "bob")
    await expect(page.get_by_test_id(f"job-row-{bobs['processData']['id']}")).to_have_count(1)
    assert await page.get_by_test_id(f"job-row-{job_id}").count() == 0
    await page.goto(f"{stack.url}/dashboard/#/jobs/{job_id}")
    await expect(page.get_by_test_id("job-state")).to_have_count(0)
    await expect(page.get_by_text(re.compile("not found|no job", re.I)).first).to_be_visible()


async def _boxes(page: Page, steps: list[dict[str, Any]]) -> list[dict[str, float]]:
    boxes = []
    for step in steps:
        box = await page.get_by_test_id(f"workflow-node-{step['id']}").bounding_box()
        assert box is not None, f"step {step['id']} is not drawn"
        boxes.append(dict(box))
    return boxes


def _a_step_then_a_column_of_two(boxes: list[dict[str, float]]) -> None:
    first, a, b = boxes
    assert abs(a["x"] - b["x"]) < 1, f"the group's members share a column: {boxes}"
    assert abs(a["y"] - b["y"]) >= a["height"], f"one above the other: {boxes}"
    assert a["x"] >= first["x"] + first["width"], f"after the first step: {boxes}"


async def test_workflows_and_schedules_show_live(stack: Stack, browser: Browser) -> None:
    # A step, then a group of two: drawn as the tree from the start, before the group runs
    # (the first step takes its time), not only once its members are seen running together.
    def step(data: int, delay: float) -> dict[str, Any]:
        return {"task": {"name": "process_data", "input": {"data": data, "delay": delay}}}

    run = stack.data(
        "alice",
        "mutation($root: WorkflowStepInput!) "
        '{ runWorkflow(input: {name: "nightly", root: $root}) { id steps { id } } }',
        root={"chain": [step(1, 2), {"group": [step(2, 0.5), step(3, 0.5)]}]},
    )["runWorkflow"]
    page = await signed_in(browser, stack, "alice")
    await page.get_by_test_id("nav-workflows").click()
    await page.goto(f"{stack.url}/dashboard/#/workflows/{run['id']}")
    for shown in run["steps"]:
        await expect(page.get_by_test_id(f"workflow-node-{shown['id']}")).to_be_visible()
    _a_step_then_a_column_of_two(await _boxes(page, run["steps"]))
    for done in run["steps"]:
        node = page.get_by_test_id(f"workflow-node-{done['id']}")
        await expect(node).to_have_attribute("data-state", "SUCCESS")
    _a_step_then_a_column_of_two(await _boxes(page, run["steps"]))
    await shot(page, "workflow")
    name = f"hourly-{uuid.uuid4().hex[:6]}"
    made = stack.data(
        "alice",
        "mutation($name: String!) { createSchedule(name: $name, task: "
        '"process_data", input: {data: 3}, timing: {interval: 3600}) { id } }',
        name=name,
    )["createSchedule"]["id"]
    await page.get_by_test_id("nav-schedules").click()
    await expect(page.get_by_test_id(f"schedule-row-{made}")).to_contain_text(name)
    await shot(page, "schedules")


async def test_a_thousand_jobs_stay_live_in_the_list(stack: Stack, browser: Browser) -> None:
    many = "mutation($items: [EnqueueItem!]!) { enqueueMany(items: $items) { id } }"
    item = {"task": "process_data", "input": {"data": 0, "delay": 0}}
    for _ in range(10):
        stack.data("ops", many, items=[item] * 100)
    # The thousand run first: what follows measures the page, not the queue ahead.
    busy = "{ jobs(first: 1, filter: {states: [PENDING, STARTED, PROGRESS]}) { edges { cursor } } }"
    deadline = time.monotonic() + 120
    while stack.data("ops", busy)["jobs"]["edges"]:
        assert time.monotonic() < deadline, "the thousand jobs did not finish"
        await asyncio.sleep(0.5)
    page = await signed_in(browser, stack, "ops")
    rows = page.locator("[data-testid^='job-row-']")
    began = time.monotonic()
    while await rows.count() < 1000:
        await rows.last.scroll_into_view_if_needed()
        await page.wait_for_timeout(100)
        assert time.monotonic() - began < 60, f"only {await rows.count()} rows after a minute"
    record_figure("rows loaded by scrolling to 1,000 (s)", round(time.monotonic() - began, 2))
    await page.evaluate("window.scrollTo(0, 0)")
    sent = time.monotonic()
    fresh = stack.data("ops", many, items=[item] * 50)["enqueueMany"]
    for job in fresh:
        await expect(page.get_by_test_id(f"job-row-{job['id']}")).to_have_attribute(
            "data-state", "SUCCESS"
        )
    record_figure("50 new jobs shown SUCCESS with 1,000 rows loaded (s)",
                  round(time.monotonic() - sent, 2))  # fmt: skip
    await shot(page, "jobs-1000")
