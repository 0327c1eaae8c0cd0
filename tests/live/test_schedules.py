"""Periodic jobs: a user schedules a task over GraphQL and a real Celery beat runs it.

Every run is an ordinary job of the schedule's owner, named after the schedule; disabling,
re-timing and deleting take effect without restarting beat; another owner sees nothing;
two beats run each tick once, and a standby takes over when the active one dies.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jwt
import pytest

from devtools.processes import beat_command, free_port
from devtools.valkey import EmbeddedValkey
from tests.conftest import ROOT, GraphQL, running_api, service_env

pytestmark = pytest.mark.slow

SECRET = uuid.uuid4().hex * 2
LOCK_TIMEOUT = 2
SCHEDULE_FIELDS = """
id name task input interval timezone enabled queue priority runs lastRunAt lastJobId
nextRunAt createdAt updatedAt crontab { minute hour dayOfWeek dayOfMonth monthOfYear }
"""
CREATE = f"""
mutation($name: String!, $task: String!, $input: JSON!, $timing: ScheduleTiming!,
         $options: ScheduleOptions) {{
  createSchedule(name: $name, task: $task, input: $input, timing: $timing, options: $options)
  {{ {SCHEDULE_FIELDS} }}
}}"""
UPDATE = f"""
mutation($id: ID!, $timing: ScheduleTiming, $name: String, $input: JSON) {{
  updateSchedule(id: $id, timing: $timing, name: $name, input: $input) {{ {SCHEDULE_FIELDS} }}
}}"""
ENABLE = f"mutation($id: ID!) {{ enableSchedule(id: $id) {{ {SCHEDULE_FIELDS} }} }}"
DISABLE = f"mutation($id: ID!) {{ disableSchedule(id: $id) {{ {SCHEDULE_FIELDS} }} }}"
DELETE = "mutation($id: ID!) { deleteSchedule(id: $id) { id name } }"
LIST = f"{{ schedules {{ {SCHEDULE_FIELDS} }} }}"
ONE = f"query($id: ID!) {{ schedule(id: $id) {{ {SCHEDULE_FIELDS} }} }}"
ONE_JOB = "query($id: ID!) { job(id: $id) { id state done schedule } }"
RUNS = """
{ jobs(first: 100, filter: { task: "process_data" }) {
    nodes { id task state input schedule scheduleId createdAt } } }
"""


class Client:
    """The API as one user (a bearer token of its own) sees it."""

    def __init__(self, api: GraphQL, owner: str) -> None:
        self.api, self.owner = api, owner
        now = int(time.time())
        token = jwt.encode({"sub": owner, "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")
        self.headers = {"authorization": f"Bearer {token}"}

    def post(self, query: str, **variables: Any) -> dict[str, Any]:
        response = self.api.http.post(
            "/graphql", json={"query": query, "variables": variables}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    def data(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(query, **variables)
        assert "errors" not in body, body["errors"]
        return dict(body["data"])

    def error(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(query, **variables)
        assert body.get("errors"), body
        return dict(body["errors"][0])

    def create(self, name: str, timing: dict[str, Any], **extra: Any) -> dict[str, Any]:
        variables = {"task": "process_data", "input": {"data": name, "delay": 0}, **extra}
        return dict(self.data(CREATE, name=name, timing=timing, **variables)["createSchedule"])

    def runs(self, schedule_id: str) -> list[dict[str, Any]]:
        nodes = self.data(RUNS)["jobs"]["nodes"]
        return [job for job in nodes if job["scheduleId"] == schedule_id]

    def wait_runs(self, schedule_id: str, count: int, within: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + within
        while len(runs := self.runs(schedule_id)) < max(count, 1):
            assert time.monotonic() < deadline, f"{len(runs)} runs of {schedule_id}, not {count}"
            time.sleep(0.1)
        return runs

    def wait_done(self, job_id: str, within: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while not (job := self.data(ONE_JOB, id=job_id)["job"]) or not job["done"]:
            assert time.monotonic() < deadline, f"job {job_id} not done: {job}"
            time.sleep(0.1)
        return dict(job)


class Beats:
    """Real `jobql beat` processes, started and killed as the tests need."""

    def __init__(self, env: dict[str, str], data_dir: Path) -> None:
        self.env, self.data_dir = env, data_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.data_dir / f"beat-{free_port()}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                beat_command(), env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        process.log = log  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def beats(valkey: EmbeddedValkey, data_dir: Path, worker: Any) -> Iterator[tuple[GraphQL, Beats]]:
    """An API with bearer tokens (so that there are owners), the session's worker, a beat."""
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_AUTH_MODE="jwt",
        JOBQL_JWT_SECRET=SECRET,
        JOBQL_RATE_LIMIT_MUTATIONS="0",
        JOBQL_BEAT_INTERVAL="0.2",
        JOBQL_BEAT_LOCK_TIMEOUT=str(LOCK_TIMEOUT),
    )
    running = Beats(env, data_dir)
    running.start()
    try:
        with running_api(env, data_dir) as api:
            yield api, running
    finally:
        running.stop()


@pytest.fixture
def alice(beats: tuple[GraphQL, Beats]) -> Client:
    return Client(beats[0], f"alice-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def bob(beats: tuple[GraphQL, Beats]) -> Client:
    return Client(beats[0], f"bob-{uuid.uuid4().hex[:8]}")


def _moments(runs: list[dict[str, Any]]) -> list[datetime]:
    return sorted(datetime.fromisoformat(job["createdAt"]) for job in runs)


def _gaps(runs: list[dict[str, Any]]) -> list[float]:
    moments = _moments(runs)
    return [(b - a).total_seconds() for a, b in itertools.pairwise(moments)]


def test_an_every_second_schedule_runs_as_ordinary_jobs_of_its_owner(alice: Client) -> None:
    schedule = alice.create("heartbeat", {"interval": 1})
    assert schedule["enabled"] and schedule["interval"] == 1 and schedule["runs"] == 0
    assert schedule["lastRunAt"] is None and schedule["timezone"] == "UTC"
    assert schedule["input"] == {"data": "heartbeat", "delay": 0.0}

    runs = alice.wait_runs(schedule["id"], 3)

    for job in runs:
        assert job["schedule"] == "heartbeat" and job["task"] == "process_data"
        assert job["input"] == {"data": "heartbeat", "delay": 0.0}
    assert all(gap > 0.7 for gap in _gaps(runs)), f"a tick ran twice: {_gaps(runs)}"
    assert alice.wait_done(runs[0]["id"])["state"] == "SUCCESS", "a worker ran it"
    seen = alice.data(ONE, id=schedule["id"])["schedule"]
    assert seen["runs"] >= 3 and seen["lastRunAt"] is not None
    assert seen["lastJobId"] in {job["id"] for job in alice.runs(schedule["id"])}
    next_run = datetime.fromisoformat(seen["nextRunAt"])
    assert next_run - datetime.now(UTC) < timedelta(seconds=1.5)
    alice.data(DELETE, id=schedule["id"])


def test_disable_update_enable_and_delete_take_effect_without_a_restart(alice: Client) -> None:
    schedule = alice.create("nightly-ish", {"interval": 1})
    alice.wait_runs(schedule["id"], 1)

    paused = alice.data(DISABLE, id=schedule["id"])["disableSchedule"]
    assert paused["enabled"] is False and paused["nextRunAt"] is None
    time.sleep(0.5)  # a run already being sent may still land
    count = len(alice.runs(schedule["id"]))
    time.sleep(2.5)
    assert len(alice.runs(schedule["id"])) == count, "a disabled schedule ran"

    slow = alice.data(UPDATE, id=schedule["id"], timing={"interval": 3600})["updateSchedule"]
    assert slow["interval"] == 3600
    resumed = alice.data(ENABLE, id=schedule["id"])["enableSchedule"]
    assert resumed["enabled"] is True
    next_run = datetime.fromisoformat(resumed["nextRunAt"]) - datetime.now(UTC)
    assert timedelta(minutes=59) < next_run <= timedelta(hours=1), "missed ticks are not caught up"
    time.sleep(2)
    assert len(alice.runs(schedule["id"])) == count, "an hourly schedule ran at once"

    alice.data(UPDATE, id=schedule["id"], timing={"interval": 1}, name="every-second")
    runs = alice.wait_runs(schedule["id"], count + 2, within=10)
    assert runs[0]["schedule"] == "every-second"

    deleted = alice.data(DELETE, id=schedule["id"])["deleteSchedule"]
    assert deleted == {"id": schedule["id"], "name": "every-second"}
    assert alice.data(LIST)["schedules"] == []
    time.sleep(0.5)
    count = len(alice.runs(schedule["id"]))
    time.sleep(2.5)
    assert len(alice.runs(schedule["id"])) == count, "a deleted schedule ran"
    assert count >= 3, "its past runs stay as jobs"


def test_another_owner_can_neither_see_nor_change_a_schedule(alice: Client, bob: Client) -> None:
    schedule = alice.create("alices", {"interval": 1})
    alice.wait_runs(schedule["id"], 1)

    assert bob.data(LIST)["schedules"] == []
    assert bob.data(ONE, id=schedule["id"])["schedule"] is None
    assert bob.runs(schedule["id"]) == []
    unknown = str(uuid.uuid4())
    for mutation, variables in (
        (DISABLE, {}),
        (ENABLE, {}),
        (DELETE, {}),
        (UPDATE, {"timing": {"interval": 3600}}),
    ):
        theirs = bob.error(mutation, id=schedule["id"], **variables)
        missing = bob.error(mutation, id=unknown, **variables)
        assert theirs["extensions"]["code"] == missing["extensions"]["code"] == "NOT_FOUND"
        assert theirs["message"] == missing["message"].replace(unknown, schedule["id"])
    # Bob may use the same name: names are per owner.
    assert bob.create("alices", {"interval": 3600})["name"] == "alices"

    still = alice.data(ONE, id=schedule["id"])["schedule"]
    assert still["enabled"] and still["interval"] == 1
    for owner in (alice, bob):
        for mine in owner.data(LIST)["schedules"]:
            owner.data(DELETE, id=mine["id"])


def test_bad_schedules_are_refused_with_the_offending_field(alice: Client) -> None:
    every = {"interval": 60}

    def refused(**variables: Any) -> list[str]:
        base = {"name": "bad", "task": "process_data", "input": {"data": 1}, "timing": every}
        error = alice.error(CREATE, **{**base, **variables})
        assert error["extensions"]["code"] == "BAD_USER_INPUT", error
        return [field["path"] for field in error["extensions"]["fields"]]

    assert refused(task="no_such_task") == ["task"]
    assert refused(task="generate_report", input={"userId": "x"}) == ["input.userId"]
    assert refused(input=[1, 2]) == ["input"]
    assert refused(timing={"interval": 0}) == ["timing.interval"]
    assert refused(timing={}) == ["timing"]
    assert refused(timing={"interval": 5, "crontab": {"minute": "0"}}) == ["timing"]
    assert refused(timing={"crontab": {"minute": "61", "dayOfWeek": "funday"}}) == [
        "timing.crontab.minute",
        "timing.crontab.dayOfWeek",
    ]
    assert refused(timing={"crontab": {"dayOfMonth": "31", "monthOfYear": "2"}}) == [
        "timing.crontab.dayOfMonth"
    ]
    assert refused(timing={"crontab": {"hour": "3"}, "timezone": "Mars/Olympus"}) == [
        "timing.timezone"
    ]
    assert refused(name="  ") == ["name"]
    assert refused(options={"queue": "nowhere"}) == ["options.queue"]
    assert refused(options={"priority": 42}) == ["options.priority"]
    assert alice.data(LIST)["schedules"] == [], "nothing was stored"

    kept = alice.create("taken", {"interval": 3600})
    assert refused(name="taken") == ["name"]
    update = alice.error(UPDATE, id=kept["id"], input={"data": 1, "delay": -1})
    assert [f["path"] for f in update["extensions"]["fields"]] == ["input.delay"]
    assert alice.data(ONE, id=kept["id"])["schedule"]["input"] == kept["input"]
    alice.data(DELETE, id=kept["id"])


def test_a_crontab_runs_in_its_own_time_zone(alice: Client) -> None:
    cron = {"crontab": {"minute": "0", "hour": "3"}, "timezone": "Europe/Paris"}
    schedule = alice.create("three-am-in-paris", cron)

    paris = ZoneInfo("Europe/Paris")
    now = datetime.now(paris)
    expected = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if expected <= now:
        expected = (expected + timedelta(days=1)).replace(hour=3)
    assert datetime.fromisoformat(schedule["nextRunAt"]) == expected
    assert schedule["crontab"] == {
        "minute": "0",
        "hour": "3",
        "dayOfWeek": "*",
        "dayOfMonth": "*",
        "monthOfYear": "*",
    }
    assert schedule["interval"] is None and schedule["timezone"] == "Europe/Paris"
    time.sleep(1)
    assert alice.runs(schedule["id"]) == [], "a crontab waits for its time"
    alice.data(DELETE, id=schedule["id"])


def test_two_beats_run_each_tick_once_and_a_standby_takes_over(
    alice: Client, beats: tuple[GraphQL, Beats]
) -> None:
    _, running = beats
    active = running.processes[0]
    standby = running.start()
    schedule = alice.create("both-beats", {"interval": 1})
    alice.wait_runs(schedule["id"], 3)
    assert standby.poll() is None, "the standby waits for the lock"

    active.send_signal(signal.SIGKILL)  # no chance to release the lock
    active.wait()
    killed = time.monotonic()
    before = len(alice.runs(schedule["id"]))
    runs = alice.wait_runs(schedule["id"], before + 2, within=LOCK_TIMEOUT + 15)
    took_over = time.monotonic() - killed

    assert took_over < LOCK_TIMEOUT + 10
    assert all(gap > 0.7 for gap in _gaps(runs)), f"a tick ran twice: {_gaps(runs)}"
    assert "Acquired lock" in standby.log.read_text()  # type: ignore[attr-defined]
    alice.data(DELETE, id=schedule["id"])


def test_jobql_beat_refuses_to_run_schedules_kept_in_django(tmp_path: Path) -> None:
    """With the schedules in a Django project's database, RedBeat would quietly run none."""
    env = service_env("redis://127.0.0.1:1/0", tmp_path, JOBQL_SCHEDULE_STORE="django")
    done = subprocess.run(
        beat_command(), env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2 and "celery -A yourproject beat" in done.stderr
