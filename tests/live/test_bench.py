"""The benchmark harness runs end to end (tiny sizes: speed is reported, never asserted)."""

from __future__ import annotations

import json
import platform
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

    from bench.run import RECORDED_PYTHON

    # Another interpreter's run writes a file of its own (latest-py3.X.*).
    version = sys.version_info[:2]
    suffix = "" if version == RECORDED_PYTHON else f"-py{version[0]}.{version[1]}"
    result = json.loads((tmp_path / f"latest{suffix}.json").read_text())
    every = (
        *("P1", "P1b", "P2", "P3", "P4", "P5", "P6", "P7", "P9", "P10", "P10b", "P11", "P12"),
        *("P13", "P14", "P15", "P16"),
    )
    for key in every:
        figure = result["figures"][key]
        assert figure["jobql"]["median"] > 0 and figure["baseline_value"]["median"] > 0, key
        assert figure["ratio"] > 0
    # CPU per operation: more than nothing, less than a second of CPU each.
    for key in ("P13", "P14"):
        assert 0 < result["figures"][key]["jobql"]["median"] < 1e6, key
        assert 0 < result["figures"][key]["baseline_value"]["median"] < 1e6, key
    assert result["figures"]["P13"]["received"] > 0, "the API delivered P6's events"
    assert result["figures"]["P13"]["baseline_received"] > 0, "the relay delivered them too"
    assert result["figures"]["P14"]["jobql"]["median"] == result["figures"]["P1"]["cpu_us"]
    assert result["figures"]["P15"]["baseline_value"] == result["figures"]["P6"]["jobql"]
    assert 100 < result["figures"]["P16"]["jobql"]["median"] < 100_000, "bytes per job"
    assert result["python"] == platform.python_version()
    assert 0 <= result["figures"]["P5"]["stall"] < 10_000, "the loop's longest stall, in ms"
    assert result["P8"]["subscriptions"] == result["size"]["subscriptions"]
    assert result["profile"] == "production" and result["auth"] == "jwt"
    assert result["memory"]["memory.jobql.keys"] > 0
    assert "| P16 |" in (tmp_path / f"latest{suffix}.md").read_text()


def test_a_profile_is_read_by_library_and_by_function(tmp_path: Path) -> None:
    """``bench.profile`` reads py-spy's collapsed stacks (``BENCH_PROFILE_DIR``)."""
    from bench.profile import summarise

    raw = tmp_path / "api-1.raw"
    raw.write_text(
        "process 1;run (asyncio/r.py:1);execute (gql/schema/root.py:9);pack (redis/c.py:3) 3\n"
        "process 1;run (asyncio/runners.py:1);execute (gql/schema/root.py:10) 1\n"
    )
    text = summarise([raw], top=5)
    assert "4 samples" in text
    assert "75.0%  redis-py / hiredis" in text and "25.0%  JobQL gql/" in text
    assert "100.0%  execute (gql/schema/root.py)" in text, "lines of one function count together"
