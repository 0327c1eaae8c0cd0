"""Whole workers lost or stopped mid-job, with a second worker alive: nothing waits an hour.

The workers here are this module's own (a queue of their own, beating every half second),
so the session's worker is never killed; they share the session's Valkey.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.processes import free_port
from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.records import job_channel, job_key
from tasks.core.settings import Settings
from tests.conftest import running_api, running_worker, service_env
from tests.support.ledger import FULL, Ledger
from tests.support.native_tasks import EFFECTS_KEY, RUNS_KEY

pytestmark = pytest.mark.slow

QUEUE = "lost-worker-test"
BEAT = 0.5
GRACE = 1.0


@pytest.fixture(scope="module")
def fast_env(valkey: EmbeddedValkey, data_dir: Path) -> dict[str, str]:
    return service_env(
        valkey.url,
        data_dir,
        JOBQL_WORKER_HEARTBEAT_INTERVAL=str(BEAT),
        JOBQL_REQUEUE_LOST_AFTER=str(GRACE),
    )


def _name(process: subprocess.Popen[bytes]) -> str:
    args = [str(a) for a in process.args]  # type: ignore[union-attr]
    return args[args.index("--hostname") + 1].split("@")[0]


@contextlib.contextmanager
def _workers(
    env: dict[str, str], data_dir: Path, settings: Settings, count: int
) -> Iterator[list[subprocess.Popen[bytes]]]:
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(running_worker(env, data_dir, settings, (QUEUE,), concurrency=1))
            for _ in range(count)
        ]


def _send(settings: Settings, **kwargs: Any) -> str:
    producer = create_celery_app(settings, producer=True)
    try:
        return str(producer.send_task("reliability.effect", kwargs=kwargs, queue=QUEUE).id)
    finally:
        producer.close()


def _until(client: redis.Redis, job_id: str, ok: Any, within: float) -> dict[str, str]:
    deadline = time.monotonic() + within
    while True:
        record: dict[str, str] = client.hgetall(job_key(job_id))  # type: ignore[assignment]
        if record and ok(record):
            return record
        assert time.monotonic() < deadline, f"job {job_id} stuck: {record}"
        time.sleep(0.05)


def _next_event(events: Any, ok: Any, within: float) -> dict[str, str]:
    """The first event on the job's channel that ``ok`` accepts (the record it announced)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = events.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            record: dict[str, str] = json.loads(message["data"])
            if ok(record):
                return record
    raise AssertionError("no such event")


def test_a_killed_worker_s_job_is_requeued_in_seconds_and_runs_once_more(
    fast_env: dict[str, str],
    data_dir: Path,
    settings: Settings,
    valkey: EmbeddedValkey,
    ledger: Ledger,
) -> None:
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    events = client.pubsub()
    with _workers(fast_env, data_dir, settings, 2) as workers:
        job_id = _send(settings, seconds=3)
        events.subscribe(job_channel(job_id))
        running = _until(client, job_id, lambda r: r["state"] == "PROGRESS", 30)
        holder = next(w for w in workers if running["worker"].startswith(_name(w)))

        os.kill(holder.pid, signal.SIGKILL)  # the worker's main process: its pool child dies too
        killed = time.monotonic()

        stalled = _next_event(events, lambda e: e["state"] == "RETRY", 30)
        shown = time.monotonic() - killed
        done = _until(client, job_id, lambda r: r["state"] == "SUCCESS", 30)
    events.close()

    assert "lost" in stalled["redelivery"], stalled
    # The heartbeat TTL (3 beats), the grace and a reaper's interval, with room for load.
    assert shown < 3 * BEAT + GRACE + BEAT + 5, f"shown stalled after {shown:.1f} s"
    assert done["attempts"] == "2" and done["lost"] == "1"
    assert not done["worker"].startswith(_name(holder))
    runs = client.lrange(RUNS_KEY + job_id, 0, -1)
    assert len(runs) == 2
    assert client.hget(EFFECTS_KEY, job_id) == runs[1], "the effect happened once"
    client.close()
    ledger.submitted, ledger.terminal["SUCCESS"], ledger.reruns = 1, 1, 1
    ledger.settle()


def _kill_with_children(pid: int) -> None:
    """SIGKILL a worker's main process and its pool children at once, as an OOM kill or a
    container's end does (the children would die with it anyway: this leaves no doubt)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(child), signal.SIGKILL)


# (heartbeat interval, grace): this module's fast beat; at full size also the defaults.
TIMINGS = [(BEAT, GRACE), *([(2.0, 5.0)] if FULL else [])]


@pytest.mark.parametrize(("beat", "grace"), TIMINGS)
def test_a_worker_killed_and_restarted_under_its_own_name_gets_its_job_back(
    data_dir: Path,
    settings: Settings,
    valkey: EmbeddedValkey,
    ledger: Ledger,
    beat: float,
    grace: float,
) -> None:
    """Issue 30, item 1: `make run` and a container restart bring a worker back under the
    name it had. Its heartbeat under that name must not pass for the dead one's: the job
    the dead one was running goes RETRY then SUCCESS, not PROGRESS for an hour."""
    fast_env = service_env(
        valkey.url,
        data_dir,
        JOBQL_WORKER_HEARTBEAT_INTERVAL=str(beat),
        JOBQL_REQUEUE_LOST_AFTER=str(grace),
    )
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    events = client.pubsub()
    name = f"same-name-{free_port()}"
    with running_worker(fast_env, data_dir, settings, (QUEUE,), concurrency=1, name=name) as first:
        job_id = _send(settings, seconds=3)
        events.subscribe(job_channel(job_id))
        running = _until(client, job_id, lambda r: r["state"] == "PROGRESS", 30)
        assert running["worker"].startswith(f"{name}@") and running["incarnation"]

        _kill_with_children(first.pid)
        killed = time.monotonic()
        first.wait(10)

    with running_worker(fast_env, data_dir, settings, (QUEUE,), concurrency=1, name=name):
        back = time.monotonic() - killed
        stalled = _next_event(events, lambda e: e["state"] == "RETRY", 60)
        to_retry = time.monotonic() - killed
        done = _until(client, job_id, lambda r: r["state"] == "SUCCESS", 60)
        to_success = time.monotonic() - killed
    events.close()

    assert "lost" in stalled["redelivery"], stalled
    # Once the dead incarnation's beat expired (3 beats) and the restarted worker's reaper
    # saw it missing past the grace (whole seconds in Redis's clock), with room for load.
    bound = back + 3 * beat + grace + 2 * beat + 1 + 5
    assert to_retry < bound, f"RETRY {to_retry:.1f} s after the kill (bound {bound:.1f} s)"
    assert done["attempts"] == "2" and done["lost"] == "1"
    assert done["worker"] == running["worker"], "the same name ran it again"
    assert done["incarnation"] != running["incarnation"], "a restart is a new incarnation"
    runs = client.lrange(RUNS_KEY + job_id, 0, -1)
    assert len(runs) == 2
    assert client.hget(EFFECTS_KEY, job_id) == runs[1], "the effect happened once"
    client.close()
    ledger.submitted, ledger.terminal["SUCCESS"], ledger.reruns = 1, 1, 1
    ledger.notes.append(
        f"back under its name {back:.1f} s, RETRY {to_retry:.1f} s, SUCCESS {to_success:.1f} s "
        f"after the kill (beat {beat:g} s, grace {grace:g} s)"
    )
    ledger.settle()


def test_a_sigterm_lets_the_running_job_finish_and_takes_nothing_new(
    fast_env: dict[str, str],
    data_dir: Path,
    settings: Settings,
    valkey: EmbeddedValkey,
    ledger: Ledger,
) -> None:
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    with _workers(fast_env, data_dir, settings, 1) as (worker,):
        first = _send(settings, seconds=2)
        _until(client, first, lambda r: r["state"] == "PROGRESS", 30)

        worker.send_signal(signal.SIGTERM)
        second = _send(settings, seconds=0)

        assert worker.wait(30) == 0
        assert client.hget(job_key(first), "state") == "SUCCESS"
        assert client.hget(job_key(first), "attempts") == "1"
        assert client.exists(job_key(second)) == 0, "the stopping worker took a new job"
    with _workers(fast_env, data_dir, settings, 1):
        assert _until(client, second, lambda r: r["state"] == "SUCCESS", 30)["attempts"] == "1"
    client.close()
    ledger.submitted, ledger.terminal["SUCCESS"] = 2, 2
    ledger.settle()


def test_a_sigterm_beside_a_live_worker_does_not_start_the_running_job_again(
    fast_env: dict[str, str],
    data_dir: Path,
    settings: Settings,
    valkey: EmbeddedValkey,
    ledger: Ledger,
) -> None:
    """A stopping worker beats on while its pool finishes the running job: the other
    worker's reaper, which took it for lost once its heartbeat was gone, started the job a
    second time beside the first (found while fixing issue 30, item 1)."""
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    seconds = 3 * BEAT + GRACE + 4 * BEAT + 3  # well past the point the reaper would act
    with _workers(fast_env, data_dir, settings, 2) as workers:
        job_id = _send(settings, seconds=seconds)
        running = _until(client, job_id, lambda r: r["state"] == "PROGRESS", 30)
        holder = next(w for w in workers if running["worker"].startswith(_name(w)))

        holder.send_signal(signal.SIGTERM)

        assert holder.wait(60) == 0
        done = _until(client, job_id, lambda r: r["state"] == "SUCCESS", 30)
        time.sleep(3 * BEAT + GRACE + 2 * BEAT)  # a reaper that would act has had its chance
    assert done["attempts"] == "1" and done["worker"] == running["worker"], done
    assert client.llen(RUNS_KEY + job_id) == 1, "the job ran a second time"
    assert client.hget(job_key(job_id), "state") == "SUCCESS"
    client.close()
    ledger.submitted, ledger.terminal["SUCCESS"] = 1, 1
    ledger.settle()


def test_a_job_cancelled_while_queued_never_runs_across_a_restart_of_all_workers(
    fast_env: dict[str, str],
    data_dir: Path,
    settings: Settings,
    valkey: EmbeddedValkey,
    ledger: Ledger,
) -> None:
    env = {**fast_env, "JOBQL_EXTRA_QUEUES": f'["reports", "{QUEUE}"]'}
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    with running_api(env, data_dir) as api:
        job_id = api.data(
            'mutation($q: String!) { enqueue(task: "reliability.effect", input: {seconds: 0}, '
            "options: {queue: $q}) { id } }",
            {"q": QUEUE},
        )["enqueue"]["id"]
        cancelled = api.data("mutation($id: ID!) { cancelJob(id: $id) { state } }", {"id": job_id})
        assert cancelled["cancelJob"]["state"] == "REVOKED"
        for _ in range(2):  # every worker of the queue stopped, then started afresh
            with _workers(fast_env, data_dir, settings, 1):
                deadline = time.monotonic() + 10
                while client.llen(QUEUE) and time.monotonic() < deadline:
                    time.sleep(0.1)
                time.sleep(1)
        assert client.llen(QUEUE) == 0, "the cancelled job's message was taken"
        assert client.hget(job_key(job_id), "state") == "REVOKED"
        assert client.lrange(RUNS_KEY + job_id, 0, -1) == [], "the cancelled job ran"
    client.close()
    ledger.submitted, ledger.terminal["REVOKED"] = 1, 1
    ledger.settle()
