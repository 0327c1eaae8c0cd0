"""Two Django beats at once run each tick once, and the standby takes over when the other dies.

django-celery-beat's scheduler takes no lock: each beat process keeps its own copy of the
schedule and sends what it finds due. Two of them ran every plain ``PeriodicTask`` twice per
tick, and a JobQL schedule twice from its second tick on (each beat's tick key names the run
it last made itself). :class:`tasks.django_beat.scheduler.JobQLDatabaseScheduler` now holds a
lease in Redis (``JOBQL_BEAT_LOCK_TIMEOUT``) renewed on every tick; a beat without it stands
by, and on taking it reads the schedule afresh from the database.

Here two real beats of the example project run an every-second JobQL schedule and an
every-second plain ``PeriodicTask`` side by side; then the beat holding the lease is
SIGKILLed (it releases nothing), and the survivor takes over once the lease expired
(``make reliability`` kills three holders in turn, a new beat starting after each). No two runs of
either schedule come from one tick (no gap between runs below three quarters of the interval:
two beats ticking on their own phases make one of half or less), and no tick is lost beyond
the lease's expiry at the kill.
"""

from __future__ import annotations

import itertools
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devtools.processes import stop_all
from gql.ops.checks import _beat_lock
from tasks.core.settings import get_settings
from tests.conftest import GraphQL
from tests.support.ledger import FULL, Ledger

EXAMPLE = Path(__file__).resolve().parent.parent
EVERY = 1  # seconds between ticks of both schedules
LOCK_TIMEOUT = 2  # JOBQL_BEAT_LOCK_TIMEOUT: a killed holder's lease expires within it
# Seconds both beats run side by side before each kill, and after the last one.
PHASE = 10.0 if FULL else 1.5
KILLS = 3 if FULL else 1
HOLDING = "beat: holding the schedules' lock"
STANDING_BY = "standing by"
CREATE = """mutation($name: String!) {
  createSchedule(name: $name, task: "orders.count_orders", input: { status: "beats" },
                 timing: { interval: 1 }) { id } }"""
DELETE = "mutation($id: ID!) { deleteSchedule(id: $id) { id } }"
RUNS = """{ jobs(first: 100, filter: { task: "orders.count_orders" }) {
  nodes { id schedule createdAt } } }"""


@dataclass
class Beats:
    env: dict[str, str]
    data_dir: Path
    running: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self) -> None:
        log = self.data_dir / f"django-beat-{len(self.running)}-{secrets.token_hex(3)}.log"
        command = [sys.executable, "-m", "celery", "-A", "exampleproject", "beat", "-l", "INFO"]
        env = {
            **self.env,
            "JOBQL_BEAT_INTERVAL": "0.2",
            "JOBQL_BEAT_LOCK_TIMEOUT": str(LOCK_TIMEOUT),
        }
        with log.open("ab") as out:
            process = subprocess.Popen(
                command, env=env, cwd=EXAMPLE, stdout=out, stderr=subprocess.STDOUT
            )
        self.running.append((process, log))

    def holder(self, within: float = 15) -> subprocess.Popen[bytes]:
        """The live beat that logged taking the lease last (each logs it when it does)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            holding = [
                (log.stat().st_mtime, process)
                for process, log in self.running
                if process.poll() is None and HOLDING in _last_word(log)
            ]
            if holding:
                return max(holding, key=lambda pair: pair[0])[1]
            time.sleep(0.1)
        raise AssertionError("no beat took the schedules' lock")

    def stop(self) -> None:
        stop_all([process for process, _ in self.running], timeout=10)


def _last_word(log: Path) -> str:
    """The last thing a beat said about the lease."""
    lines = [line for line in log.read_text().splitlines() if "lock" in line]
    return lines[-1] if lines else ""


@pytest.fixture
def beats(env: dict[str, str], data_dir: Path) -> Iterator[Beats]:
    running = Beats(env, data_dir)
    try:
        yield running
    finally:
        running.stop()


def _plain_task(name: str) -> Any:
    """A ``PeriodicTask`` JobQL did not make, as the Django admin saves one."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    every, _ = IntervalSchedule.objects.get_or_create(every=EVERY, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(
        name=name, task="orders.count_orders", interval=every, kwargs='{"status": "plain"}'
    )


def _plain_sends(beats: Beats, name: str) -> list[float]:
    """When any beat sent the plain task (its log's clock, not the worker's, which queues)."""
    said = f"Sending due task {name} "
    return sorted(
        datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for _, log in beats.running
        for line in log.read_text().splitlines()
        if said in line
    )


def _plain_runs(name: str, count: int) -> int:
    """How many runs of the plain task the worker finished, once ``count`` did (or 10 s)."""
    from django_celery_results.models import TaskResult

    deadline = time.monotonic() + 10
    while (done := TaskResult.objects.filter(periodic_task_name=name).count()) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return done


def _jobql_runs(user: GraphQL, name: str) -> list[float]:
    nodes = user.data(RUNS)["jobs"]["nodes"]
    return sorted(
        datetime.fromisoformat(job["createdAt"]).timestamp()
        for job in nodes
        if job["schedule"] == name
    )


def _gaps(moments: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(moments)]


def test_two_django_beats_run_each_tick_once_and_a_standby_takes_over(
    alice: GraphQL, beats: Beats, ledger: Ledger
) -> None:
    beats.start()  # first: each takes seconds to start, meanwhile the schedules are made
    beats.start()
    name = f"beats-{secrets.token_hex(3)}"
    plain = _plain_task(f"plain-{name}")
    schedule = alice.data(CREATE, {"name": name})["createSchedule"]
    kills: list[float] = []
    try:
        for _ in range(KILLS):
            holder = beats.holder()
            time.sleep(PHASE)
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            kills.append(time.time())
            if len(kills) < KILLS:
                beats.start()  # two beats again for the next kill
        beats.holder(within=LOCK_TIMEOUT + 5)
        _beat_lock(get_settings())  # `jobql check --beat` sees the lease renewed
        time.sleep(PHASE)
    finally:
        plain.delete()
        alice.data(DELETE, {"id": schedule["id"]})
    time.sleep(0.5)  # a run sent as the schedules went reaches the worker and its records

    plain_runs, jobql_runs = _plain_sends(beats, plain.name), _jobql_runs(alice, name)
    assert _plain_runs(plain.name, len(plain_runs)) == len(plain_runs), "each send ran once"
    for label, runs in (("plain", plain_runs), ("JobQL", jobql_runs)):
        gaps = _gaps(runs)
        assert len(runs) >= 2 * KILLS + 2, f"{label}: too few runs: {runs}"
        # Two beats each on its own phase would make some gap half the interval or less.
        assert min(gaps) > EVERY * 0.75, f"{label}: a tick ran twice: {gaps}"
        # Every gap is the schedule's, but the one a kill makes: the lease left to expire.
        assert max(gaps) < EVERY + LOCK_TIMEOUT + 2.5, f"{label}: a tick was lost: {gaps}"
    logs = [log.read_text() for _, log in beats.running]
    assert sum(STANDING_BY in text for text in logs) >= len(logs) - 1, "each extra beat stood by"

    ledger.submitted = len(plain_runs) + len(jobql_runs)
    ledger.terminal["ran once"] = ledger.submitted
    longest = max(max(_gaps(plain_runs)), max(_gaps(jobql_runs)))
    ledger.notes.append(
        f"two beats at once, the lease holder SIGKILLed {KILLS}x (lease {LOCK_TIMEOUT} s); "
        f"{len(jobql_runs)} ticks of a JobQL schedule and {len(plain_runs)} of a plain "
        f"PeriodicTask, each run once; longest gap {longest:.1f} s (every {EVERY} s)"
    )
    ledger.settle()


def test_a_run_just_sent_is_not_sent_again_when_the_schedule_changes(env: dict[str, str]) -> None:
    """One beat, in this process: a change to the schedule noticed as Celery's tick rebuilt
    its queue (every beat sees one when another starts and installs its default entries)
    made it rebuild the queue again from entries that did not know of the run just sent."""
    from tasks.core import redis_clients
    from tasks.core.app import celery_app
    from tasks.django_beat.scheduler import JobQLDatabaseScheduler, ScheduleLease

    name = f"rebuilt-{secrets.token_hex(3)}"
    plain = _plain_task(name)
    scheduler = JobQLDatabaseScheduler(app=celery_app)
    # A lease of its own: a beat another test left running must not hold this one back.
    scheduler._lease = ScheduleLease(redis_clients.worker_client(), f"test:{name}", LOCK_TIMEOUT)
    sent: list[str] = []
    scheduler.apply_entry = lambda entry, producer=None: sent.append(entry.name)
    try:
        deadline = time.monotonic() + 5
        while name not in sent:  # its first run, once due (one second after its creation)
            assert time.monotonic() < deadline, "never sent"
            time.sleep(max(0.0, min(scheduler.tick(), 0.1)))
        scheduler._heap_invalidated = True  # what django-celery-beat sets on a change
        for _ in range(5):
            scheduler.tick()
    finally:
        scheduler.close()
        plain.delete()
    assert sent.count(name) == 1, sent
