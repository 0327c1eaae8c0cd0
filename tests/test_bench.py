"""The benchmark harness runs end to end (tiny sizes: speed is reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_harness_measures_every_figure_against_its_baseline(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--tiny", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    result = json.loads((tmp_path / "latest.json").read_text())
    every = ("P1", "P1b", "P2", "P3", "P4", "P5", "P6", "P7", "P9", "P10", "P10b", "P11", "P12")
    for key in every:
        figure = result["figures"][key]
        assert figure["jobql"]["median"] > 0 and figure["baseline_value"]["median"] > 0, key
        assert figure["ratio"] > 0
    assert result["P8"]["subscriptions"] == result["size"]["subscriptions"]
    assert result["profile"] == "production" and result["auth"] == "jwt"
    assert result["memory"]["memory.jobql.keys"] > 0
    assert "| P12 |" in (tmp_path / "latest.md").read_text()
