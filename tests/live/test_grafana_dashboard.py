"""Every query of the shipped Grafana dashboard selects series that a running JobQL exports:
the session's API and worker run a job to SUCCESS and one to FAILURE, serve a subscription and
answer an operation with errors, and each selector of each ``expr`` must then match a series
of ``/metrics`` with the labels it filters and groups by. A renamed metric or label fails here,
not on an operator's empty panel."""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GraphQL
from tests.support import dashboard as shipped
from tests.support.clients import graphql_transport_ws
from tests.support.promql import Selector

PROCESS = "mutation($i: ProcessDataInput!) { processData(input: $i) { id } }"
SUMMARIZE = "mutation($i: SummarizeInput!) { summarize(input: $i) { id } }"
WATCH = "subscription($id: ID!) { job(id: $id) { id state } }"
# Labels Prometheus adds to every series it scrapes: a query may group by them.
SCRAPE_LABELS = frozenset({"instance", "job"})

Series = dict[str, list[tuple[dict[str, str], float]]]


def _series(text: str) -> Series:
    """Each sample name (``_total``, ``_bucket``, ``_sum``, ``_count`` as Prometheus stores
    them) with the label sets it has, and their values."""
    series: Series = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[sample.name].append((dict(sample.labels), sample.value))
    return series


def _matches(labels: dict[str, str], selector: Selector) -> bool:
    for label, op, value in selector.matchers:
        if label not in labels:
            return False
        got = labels[label]
        if (op == "=" and got != value) or (op == "!=" and got == value):
            return False
        if op in ("=~", "!~") and bool(re.fullmatch(value, got)) != (op == "=~"):
            return False
    return all(label in labels for label in selector.grouped_by - SCRAPE_LABELS)


def _open(series: Series) -> float:
    """Subscriptions open on graphql-transport-ws, as /metrics tells."""
    return sum(
        value
        for labels, value in series.get("jobql_subscriptions_active", [])
        if labels.get("transport") == "graphql-transport-ws"
    )


def test_every_dashboard_query_selects_series_the_live_service_exports(api: GraphQL) -> None:
    failed = api.data(SUMMARIZE, {"i": {"fail": True}})["summarize"]["id"]
    ok = api.data(PROCESS, {"i": {"data": 1, "delay": 1}})["processData"]["id"]
    # Watched while it runs (a second: time to subscribe on a busy machine), the open
    # subscription is counted on its transport's gauge.
    open_while_running: list[float] = []

    def on_result(result: dict[str, Any]) -> None:
        if result["data"]["job"]["state"] not in ("SUCCESS", "FAILURE"):
            open_while_running.append(_open(_series(api.http.get("/metrics").text)))

    stream = asyncio.run(graphql_transport_ws(api.base_url, WATCH, {"id": ok}, 20, on_result))
    assert stream.completed and stream.jobs[-1]["state"] == "SUCCESS"
    assert open_while_running and min(open_while_running) >= 1, open_while_running
    assert api.wait_done(failed)["state"] == "FAILURE"
    api.error("{ noSuchField }")  # an operation whose outcome is "error"

    ended = [
        {"task": "process_data", "state": "SUCCESS"},
        {"task": "summarize", "state": "FAILURE"},
    ]
    deadline = time.monotonic() + 10
    while True:  # the workers write their figures to Redis every half second
        series = _series(api.http.get("/metrics").text)
        finished = series.get("jobql_jobs_finished_total", [])
        counted = all(any(want.items() <= got.items() for got, _ in finished) for want in ended)
        if counted and _open(series) == min(open_while_running) - 1:  # and the watch closed
            break
        assert time.monotonic() < deadline, f"never counted: {finished}, {_open(series)} open"
        time.sleep(0.2)

    queries = shipped.queries(shipped.load())
    missing = [
        f"{query.where}: {selector.metric}{selector.matchers} by {sorted(selector.grouped_by)}"
        for query in queries
        for selector in query.selectors
        if not any(_matches(labels, selector) for labels, _ in series.get(selector.metric, []))
    ]
    assert not missing, "selectors matching no exported series:\n" + "\n".join(missing)
    assert sum(len(query.selectors) for query in queries) >= 30
