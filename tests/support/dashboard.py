"""The shipped Grafana dashboard, read as its queries: every panel target's ``expr`` and every
templating query, with Grafana's variables replaced by what Grafana would put there."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.support.promql import Selector, selectors, substitute

DASHBOARD = ROOT / "deploy" / "grafana" / "jobql.json"
# What Grafana substitutes: "All" of a multi-value variable is its allValue; the intervals
# are durations. A variable the dashboard adds needs a value here, or substitute() fails.
VARIABLES = {
    "task": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}
LABEL_VALUES = re.compile(r"label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)")


@dataclass
class Query:
    where: str  # the panel's title and the target's refId, or the variable's name
    expr: str
    selectors: list[Selector]


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            where = f"{panel['title']} / {target['refId']}"
            found.append(Query(where, expr, selectors(substitute(expr, VARIABLES))))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        expr = variable["query"]["query"] if isinstance(variable["query"], dict) else variable[
            "query"]  # fmt: skip
        match = LABEL_VALUES.fullmatch(expr.strip())
        assert match and match["selector"], f"${variable['name']}: label_values(metric, label)"
        chosen = selectors(substitute(match["selector"], VARIABLES))
        for selector in chosen:
            selector.grouped_by.add(match["label"])
        found.append(Query(f"${variable['name']}", expr, chosen))
    return found
