"""`make run` as a new user meets it: everything starts (API, worker, beat, Valkey), a job
runs, one Ctrl-C stops all, and a crashed worker or beat is started again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.processes import free_port, wait_for_port
from tests.conftest import ROOT, GraphQL

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _group_members(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid="], capture_output=True, text=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid]


def _start(env: dict[str, str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    with (tmp_path / "run.log").open("wb") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "devtools.run", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, like a terminal's foreground job
        )
    return run, port


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBQL_") and k != "REDIS_URL"}
    env.update(PYTHONPATH=str(ROOT), JOBQL_DATA_DIR=str(tmp_path))
    return env


def test_run_uses_redis_url_when_it_is_set(tmp_path: Path, valkey: object) -> None:
    env = _clean_env(tmp_path)
    env["REDIS_URL"] = valkey.url  # type: ignore[attr-defined]
    run, port = _start(env, tmp_path)
    try:
        wait_for_port(port, 60, run)
        api = GraphQL(f"http://127.0.0.1:{port}")
        job = api.data("mutation { processData(input: {data: 2, delay: 0}) { id } }")
        assert api.wait_done(job["processData"]["id"], timeout=60)["state"] == "SUCCESS"
        api.http.close()
        os.killpg(run.pid, signal.SIGTERM)
        assert run.wait(timeout=60) == 0
        assert "embedded Valkey" not in (tmp_path / "run.log").read_text()
        assert not (tmp_path / "valkey").exists()
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_run_starts_everything_and_one_ctrl_c_stops_it(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    run, port = _start(env, tmp_path)
    try:
        wait_for_port(port, 60, run)
        api = GraphQL(f"http://127.0.0.1:{port}")
        job = api.data('mutation { processData(input: {data: "hi", delay: 0}) { id } }')
        done = api.wait_done(job["processData"]["id"], timeout=60)
        assert done["state"] == "SUCCESS"
        assert (tmp_path / "valkey").is_dir(), "the embedded Valkey keeps its data in the data dir"
        api.http.close()
        members = _group_members(run.pid)
        assert len(members) >= 4, "the runner, a worker, beat and the API share the group"
        assert _child_pid(run.pid, "beat") is not None, "make run starts beat too"

        os.killpg(run.pid, signal.SIGINT)  # what one Ctrl-C in the terminal sends

        assert run.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-3000:]
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in members) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in members if _alive(pid)], "something outlived Ctrl-C"
        assert not _valkey_running(tmp_path / "run.log"), "the embedded Valkey outlived Ctrl-C"
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def _child_pid(run_pid: int, command: str) -> int | None:
    """The runner's child running ``celery ... <command>`` (worker or beat)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True,
                         text=True).stdout  # fmt: skip
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        if int(ppid) == run_pid and "celery" in args and command in args.split():
            return int(pid)
    return None


def test_a_crashed_worker_or_beat_is_restarted_and_the_rest_stays_up(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    run, port = _start(env, tmp_path)
    try:
        wait_for_port(port, 60, run)
        first = {kind: _child_pid(run.pid, kind) for kind in ("worker", "beat")}
        assert None not in first.values(), first

        for pid in first.values():
            os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]  # an out-of-memory kill

        deadline = time.monotonic() + 30
        for kind, pid in first.items():
            while _child_pid(run.pid, kind) in (None, pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _child_pid(run.pid, kind) not in (None, pid), f"the {kind} was not restarted"
        assert run.poll() is None, "make run stopped with its worker"
        log = (tmp_path / "run.log").read_text()
        for kind in first:
            assert re.search(rf"the {kind} exited with -9 after [\d.]+ s; restarting it in", log)
        api = GraphQL(f"http://127.0.0.1:{port}")
        job = api.data("mutation { processData(input: {data: 3, delay: 0}) { id } }")
        assert api.wait_done(job["processData"]["id"], timeout=60)["state"] == "SUCCESS"
        api.http.close()

        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def _valkey_running(run_log: Path) -> bool:
    found = re.search(r"embedded Valkey on redis://([\d.]+:\d+)", run_log.read_text())
    assert found, "the runner says where its Valkey listens"
    out = subprocess.run(["ps", "-e", "-o", "args="], capture_output=True, text=True).stdout
    return any("valkey-server" in line and found.group(1) in line for line in out.splitlines())
