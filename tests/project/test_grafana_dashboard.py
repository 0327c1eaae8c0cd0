"""The Grafana dashboard (deploy/grafana/jobql.json) imports anywhere: panels with Prometheus
targets, the data source chosen by a variable and never a uid of one installation, and every
query readable as the series it selects. That each of those series exists is proven against a
live /metrics in tests/live/test_grafana_dashboard.py."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import dashboard as shipped
from tests.support.promql import Selector, selectors, substitute

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _uids(node: Any) -> list[str]:
    """Every ``uid`` anywhere in the JSON."""
    if isinstance(node, dict):
        own = [node["uid"]] if isinstance(node.get("uid"), str) else []
        return own + [uid for value in node.values() for uid in _uids(value)]
    if isinstance(node, list):
        return [uid for item in node for uid in _uids(item)]
    return []


def test_the_dashboard_has_panels_with_prometheus_targets_and_no_datasource_uid() -> None:
    board = shipped.load()
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    assert not source.get("current"), "the data source is the importer's choice"
    assert variables["task"]["datasource"] == DATASOURCE
    panels = [p for p in shipped.panels(board) if p["type"] != "row"]
    assert len(panels) >= 12
    ids = [p["id"] for p in shipped.panels(board)]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"] and target["refId"], panel["title"]
    assert set(_uids(board)) == {board["uid"], "${datasource}"}, "no installation's uid"


def test_the_dashboard_covers_what_an_operator_watches() -> None:
    """Jobs by state, queue wait and run time, failures, workers, subscriptions, API latency."""
    named = {s.metric for query in shipped.queries(shipped.load()) for s in query.selectors}
    assert {
        "jobql_jobs_finished_total",
        "jobql_jobs_enqueued_total",
        "jobql_queue_pending",
        "jobql_job_queue_wait_seconds_bucket",
        "jobql_job_run_seconds_bucket",
        "jobql_workers_live",
        "jobql_worker_tasks_active",
        "jobql_subscriptions_active",
        "jobql_graphql_operation_seconds_bucket",
    } <= named
    assert all(name.startswith("jobql_") for name in named), named


def _read(expr: str) -> list[tuple[str, list[tuple[str, str, str]], set[str]]]:
    return [(s.metric, s.matchers, s.grouped_by) for s in selectors(expr)]


def test_the_reader_finds_metrics_their_matchers_and_the_labels_grouped_by() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (max by (task, le) (rate('
        'jobql_job_run_seconds_bucket{task=~"a|b", state!="x"}[5m]))))'
    )  # fmt: skip
    assert _read(expr) == [
        ("jobql_job_run_seconds_bucket", [("task", "=~", "a|b"), ("state", "!=", "x")],
         {"task", "le"}),
    ]  # fmt: skip
    assert _read("sum(rate(a_total[1m])) by (x) / sum without (y) (b) + 2 * c offset 5m") == [
        ("a_total", [], {"x"}),
        ("b", [], {"y"}),
        ("c", [], set()),
    ]
    assert _read("max(up) > bool 0 and on_call") == [("up", [], set()), ("on_call", [], set())]
    assert _read('x{a="with \\"quote\\" and } brace"}') == [
        ("x", [("a", "=", 'with "quote" and } brace')], set())
    ]


@pytest.mark.parametrize(
    "expr",
    ["a * on (x) b", "a / ignoring (x) group_left b", '{__name__="x"}', "sum(a", "a)"],
)
def test_the_reader_refuses_what_it_cannot_read_exactly(expr: str) -> None:
    with pytest.raises(ValueError):
        selectors(expr)


def test_grafana_variables_are_replaced_and_an_unknown_one_refused() -> None:
    assert substitute('x{t=~"$task"}[$__rate_interval]', shipped.VARIABLES) == 'x{t=~".*"}[1m]'
    assert substitute("x[${__range}]", shipped.VARIABLES) == "x[1h]"
    with pytest.raises(ValueError):
        substitute('x{q=~"$queue"}', shipped.VARIABLES)


def test_every_query_selects_at_least_one_series() -> None:
    for query in shipped.queries(shipped.load()):
        assert query.selectors, query.where
        assert all(isinstance(s, Selector) for s in query.selectors)
