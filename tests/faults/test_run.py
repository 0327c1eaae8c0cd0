"""`make run` as a new user meets it: the README's command starts everything (API, worker,
beat, Valkey), `jobql check` finds it, a job runs, one Ctrl-C stops all and lets running
jobs finish, and any of its processes that dies is started again."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GraphQL
from tests.newcomer import PROCESSES, MakeRun, alive, tour
from tests.support.ledger import Ledger

pytestmark = pytest.mark.slow


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """A newcomer's shell: no JobQL or Redis setting, the data kept in ``tmp_path``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JOBQL_", "PYTEST_")) and k not in ("REDIS_URL", "PYTHONPATH")
    }
    env["JOBQL_DATA_DIR"] = str(tmp_path)
    return env


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    run = MakeRun(tmp_path, _clean_env(tmp_path))
    try:
        yield run
    finally:
        run.kill()


def test_make_run_starts_everything_and_one_ctrl_c_stops_it(
    make_run: MakeRun, tmp_path: Path
) -> None:
    pids = make_run.start().wait_ready()
    assert set(PROCESSES) <= set(pids), f"make run starts all four: {pids}"
    assert all(alive(pid) for pid in pids.values()), pids
    assert (tmp_path / "valkey").is_dir(), "the embedded Valkey keeps its data in the data dir"

    # `jobql check` beside it, with nothing set: it finds the embedded Valkey by dev.env.
    check = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "jobql"), "check"],
        env=make_run.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "using the embedded Valkey of `make run`" in check.stdout

    seen = tour(make_run)
    assert seen["states"][-1] == "SUCCESS"

    make_run.interrupt()
    took = make_run.wait_stopped(pids, within=60)
    assert make_run.process is not None and make_run.process.returncode in (0, 2, -2)
    assert not (tmp_path / "run.json").exists() and not (tmp_path / "dev.env").exists()
    assert took < 60


def test_run_uses_redis_url_when_it_is_set(tmp_path: Path, valkey: object) -> None:
    env = _clean_env(tmp_path)
    env["REDIS_URL"] = valkey.url  # type: ignore[attr-defined]
    run = MakeRun(tmp_path, env)
    try:
        pids = run.start().wait_ready()
        assert "valkey" not in pids, "no embedded Valkey when REDIS_URL is set"
        api = GraphQL(run.base_url)
        job = api.data("mutation { processData(input: {data: 2, delay: 0}) { id } }")
        assert api.wait_done(job["processData"]["id"], timeout=60)["state"] == "SUCCESS"
        api.http.close()
        run.interrupt()
        run.wait_stopped(pids, within=60)
        assert "embedded Valkey" not in run.log()
        assert not (tmp_path / "valkey").exists()
    finally:
        run.kill()


def _running(make_run: MakeRun, mutation: str, state: str) -> tuple[dict[str, int], str]:
    """``make run`` up, and the id of the job ``mutation`` started, once it is in ``state``."""
    pids = make_run.start().wait_ready()
    api = GraphQL(make_run.base_url)
    (job,) = api.data(mutation).values()
    api.wait(job["id"], lambda seen: seen["state"] == state, timeout=60)
    api.http.close()
    return pids, job["id"]


@contextlib.contextmanager
def _next_start(make_run: MakeRun) -> Iterator[GraphQL]:
    """``make run`` again on the same data, as a developer's next start."""
    again = MakeRun(make_run.data_dir, make_run.env)
    try:
        again.start().wait_ready()
        yield GraphQL(again.base_url)
    finally:
        again.kill()


def test_ctrl_c_lets_a_running_job_finish_before_everything_stops(make_run: MakeRun) -> None:
    # Longer than the 20 s after which make run used to SIGKILL everything, stranding the job.
    mutation = "mutation { processData(input: {data: 1, delay: 22}) { id } }"
    pids, job_id = _running(make_run, mutation, "STARTED")

    make_run.interrupt()
    make_run.wait_stopped(pids, within=90)
    log = make_run.log()
    assert f"job run ended job_id={job_id} task=process_data state=SUCCESS" in log, log[-3000:]

    # The next start shows it finished: its record survived in the embedded Valkey.
    with _next_start(make_run) as api:
        assert api.job(job_id)["state"] == "SUCCESS"  # type: ignore[index]


@pytest.mark.parametrize("victim", PROCESSES)
def test_any_process_that_dies_is_started_again_and_the_rest_stays_up(
    make_run: MakeRun, victim: str, ledger: Ledger
) -> None:
    pids = make_run.start().wait_ready()
    os.kill(pids[victim], signal.SIGKILL)  # an out-of-memory kill
    killed = time.monotonic()

    deadline = time.monotonic() + 60
    while make_run.pids().get(victim) in (None, pids[victim]) and time.monotonic() < deadline:
        time.sleep(0.2)
    new = make_run.pids()
    assert new.get(victim) not in (None, pids[victim]), (
        f"the {victim} was not restarted: {pids} -> {new}\n{make_run.log()[-3000:]}"
    )
    assert all(new[name] == pids[name] for name in PROCESSES if name != victim), (pids, new)
    assert make_run.process is not None and make_run.process.poll() is None
    assert re.search(
        rf"the {victim} exited with -9 after [\d.]+ s; restarting it in", make_run.log()
    )

    make_run.wait_ready()
    ledger.notes.append(f"{victim} back, API ready {time.monotonic() - killed:.1f} s after kill")
    api = GraphQL(make_run.base_url)
    job = api.data("mutation { processData(input: {data: 3, delay: 0}) { id } }")
    done = api.wait_done(job["processData"]["id"], timeout=60)
    api.http.close()
    ledger.submitted = 1
    ledger.terminal[done["state"]] += 1
    assert done["state"] == "SUCCESS"
    ledger.settle()

    make_run.interrupt()
    make_run.wait_stopped(new, within=60)


def test_a_second_ctrl_c_cuts_the_job_and_the_next_start_runs_it_again(
    make_run: MakeRun, ledger: Ledger
) -> None:
    mutation = "mutation { generateReport(input: {userId: 7, steps: 40, stepDelay: 0.25}) { id } }"
    pids, job_id = _running(make_run, mutation, "PROGRESS")

    make_run.interrupt()
    time.sleep(1)
    make_run.interrupt()  # the impatient second Ctrl-C: the job is cut mid-run
    make_run.wait_stopped(pids, within=60)
    assert "cutting the running jobs" in make_run.log()

    with _next_start(make_run) as api:
        started = time.monotonic()
        done = api.wait_done(job_id, timeout=90)
        ledger.submitted = 1
        ledger.terminal[done["state"]] += 1
        ledger.notes.append(f"ready to SUCCESS {time.monotonic() - started:.1f} s")
        assert done["state"] == "SUCCESS", done
        ledger.settle()
