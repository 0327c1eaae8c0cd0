"""A rolling upgrade from the previous release under load, and the same path back (issue 29,
item 2).

The previous release (the one CHANGELOG.md names, at its commit, in its own tree and
environment: ``tests.support.releases``) runs two API replicas and a worker (two at full size)
on a Valkey of this module's own. A steady load goes through the replicas in turn: long
reports with a subscriber on every transport (each reconnecting across the replicas, as
graphql-ws's ``retryAttempts`` does), jobs scheduled a few seconds ahead, effect-counted jobs
(``reliability.effect``), and a small workflow at each stage. Then each API replica in turn
leaves the rotation, gets SIGTERM, and a replica of the other release takes its place on a
new port; then each worker gets SIGTERM (warm shutdown: its running jobs finish) and a worker
of the other release starts. The ledger: every job submitted finished or was refused with a
reason, none lost, no effect applied twice, every subscriber got its job's terminal state,
every scheduled job ran exactly once, every workflow succeeded. The upgrade goes from the
previous release to this one; the downgrade from this one back to the previous.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import httpx
import pytest
import redis

from devtools.processes import free_port, stop_all, wait_for_port
from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.records import job_key
from tasks.core.settings import Settings
from tests.conftest import service_env
from tests.support.clients import TRANSPORTS, Stream, reconnecting
from tests.support.ledger import FULL, Ledger, scale
from tests.support.native_tasks import RUNS_KEY, SPANS_KEY
from tests.support.releases import (
    RELEASES,
    Release,
    current,
    prepare,
    previous_release,
    unavailable,
)

pytestmark = pytest.mark.slow

# The load: one submission every INTERVAL seconds, through the replicas in turn, in this cycle.
INTERVAL = 0.4 if not FULL else 0.2
CYCLE = ("report", "effect", "scheduled", "quick")
REPORT = {"userId": 1, "steps": 25, "stepDelay": 0.1}  # 2.5 s: runs across a worker's stop
# Seconds of load before the first replacement, between two, and after the last.
# A warm shutdown longer than this (its jobs take a second or two) has its stacks written out.
SLOW_STOP = 8.0
WARMUP, BETWEEN, TAIL = (2.0, 1.0, 2.0) if not FULL else (5.0, 4.0, 5.0)
WORKERS = scale(1, 2)
CONCURRENCY = 4

ENQUEUE = (
    "mutation($i: JSON!, $o: EnqueueOptions) "
    '{ enqueue(task: "reliability.effect", input: $i, options: $o) { id } }'
)
REPORT_MUTATION = "mutation($i: GenerateReportInput!) { generateReport(input: $i) { id } }"
SUBMISSIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "report": (REPORT_MUTATION, {"i": REPORT}),
    "effect": (ENQUEUE, {"i": {"seconds": 1.0}}),
    "scheduled": (ENQUEUE, {"i": {"seconds": 0.2}, "o": {"countdown": 4}}),
    "quick": (ENQUEUE, {"i": {"seconds": 0.1}}),
}
# Fields both releases serve (the Job type is the same in both schemas).
WATCH = """subscription($id: ID!) { job(id: $id) {
  id state done sequence progress { percent } error { type message } } }"""
STATE = "query($id: ID!) { job(id: $id) { id task state done error { type message } } }"
RUN_WORKFLOW = "mutation($input: WorkflowInput!) { runWorkflow(input: $input) { id } }"
WORKFLOW_STATE = """query($id: ID!) { workflow(id: $id) {
  id state done failedStep { id task error { type message } } } }"""


def _task(name: str, input: dict[str, Any]) -> dict[str, Any]:
    return {"task": {"name": name, "input": input}}


# A chain whose middle is a group: about 4 s of work, so it spans a replacement or two.
WORKFLOW = {
    "chain": [
        _task("generate_report", {"userId": 2, "steps": 15, "stepDelay": 0.1}),
        {
            "group": [
                _task("process_data", {"data": "a", "delay": 0.5}),
                _task("generate_report", {"userId": 3, "steps": 10, "stepDelay": 0.1}),
            ]
        },
        _task("generate_report", {"userId": 4, "steps": 10, "stepDelay": 0.1}),
    ]
}


@dataclass
class Member:
    """An API replica or a worker, of one release."""

    release: Release
    process: subprocess.Popen[bytes]
    name: str  # the replica's base URL, or the worker's name
    log: Path


@dataclass
class Stack:
    valkey: EmbeddedValkey
    env: dict[str, str]
    settings: Settings
    data_dir: Path
    # The load balancer's rotation: clients read it at each (re)connect and submission.
    urls: list[str] = field(default_factory=list)
    apis: list[Member] = field(default_factory=list)
    workers: list[Member] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    def _spawn(self, release: Release, command: list[str], name: str) -> tuple[Any, Path]:
        log = self.data_dir / f"{name}.log"
        self.logs.append(log)
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env=release.env(self.env),
                cwd=release.root,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def start_api(self, release: Release) -> Member:
        port = free_port()
        process, log = self._spawn(release, release.api_command(port), f"api-{port}")
        try:
            wait_for_port(port, 60, process)
        except BaseException:
            stop_all([process], timeout=10)
            raise
        return Member(release, process, f"http://127.0.0.1:{port}", log)

    def start_worker(self, release: Release) -> Member:
        name = f"rolling-{release.version}-{free_port()}"
        process, log = self._spawn(release, release.worker_command(name, CONCURRENCY), name)
        control = create_celery_app(self.settings, producer=True)
        try:
            deadline = time.monotonic() + 60
            destination = [f"{name}@{socket.gethostname()}"]
            while not control.control.ping(destination=destination, timeout=0.5):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"worker {name} did not start"
        except BaseException:
            stop_all([process], timeout=30)
            raise
        finally:
            control.close()
        return Member(release, process, name, log)

    def close(self) -> None:
        stop_all([m.process for m in (*self.apis, *self.workers)], timeout=30)


@pytest.fixture(scope="module")
def releases() -> tuple[Release, Release]:
    """The previous release (made once, cached under var/releases) and this tree."""
    version, commit = previous_release()
    if reason := unavailable(commit):
        pytest.skip(reason)
    return prepare(version, commit), current()


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("rolling")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_KEEP_ALIVE_INTERVAL="1",
        JOBQL_MAX_SUBSCRIPTIONS_PER_OWNER="5000",
        # A replica's drain: plain requests in flight get this long to finish.
        JOBQL_SHUTDOWN_GRACE_SECONDS="5",
    )
    built = Stack(valkey, env, Settings(redis_url=valkey.url), data_dir)
    try:
        yield built
    finally:
        built.close()
        valkey.stop()


@dataclass
class Submitted:
    job_id: str
    kind: str
    via: str  # the version of the replica that took it


class Rotated(Sequence[str]):
    """The live rotation, read from its ``offset``-th entry on (a client's first choice)."""

    def __init__(self, urls: list[str], offset: int) -> None:
        self.urls, self.offset = urls, offset

    def __len__(self) -> int:
        return len(self.urls)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...
    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))][i]
        return self.urls[(i + self.offset) % len(self.urls)]


class Load:
    """The steady stream of jobs, its subscribers and workflows, and what became of them."""

    def __init__(self, stack: Stack, book: Ledger) -> None:
        self.stack = stack
        self.book = book
        self.jobs: list[Submitted] = []
        self.workflows: list[str] = []
        self.watches: list[asyncio.Task[Stream]] = []
        self.stopping = asyncio.Event()
        self.http = httpx.AsyncClient(timeout=30)
        self.turn = 0

    def _url(self) -> tuple[str, str]:
        """The next replica in the rotation, and its release's version."""
        urls = self.stack.urls
        url = urls[self.turn % len(urls)]
        self.turn += 1
        version = next(m.release.version for m in self.stack.apis if m.name == url)
        return url, version

    async def _post(self, query: str, variables: dict[str, Any]) -> tuple[Any, str]:
        """One submission: the data, or None once its refusal is counted."""
        url, version = self._url()
        self.book.submitted += 1
        try:
            response = await self.http.post(
                f"{url}/graphql", json={"query": query, "variables": variables}
            )
        except httpx.ConnectError:
            self.book.rejected["connection refused"] += 1  # it never reached the API
            return None, version
        body = response.json()
        if errors := body.get("errors"):
            self.book.rejected[errors[0].get("extensions", {}).get("code", "error")] += 1
            return None, version
        assert response.status_code == 200, response.text
        return body["data"], version

    async def run(self) -> None:
        i = 0
        while not self.stopping.is_set():
            kind = CYCLE[i % len(CYCLE)]
            query, variables = SUBMISSIONS[kind]
            data, version = await self._post(query, variables)
            if data is not None:
                job_id = next(iter(data.values()))["id"]
                self.jobs.append(Submitted(job_id, kind, version))
                if kind == "report":
                    self._watch(job_id)
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), INTERVAL)

    def _watch(self, job_id: str) -> None:
        """A subscriber on every transport, each reconnecting across the rotation; they
        start on the replicas in turn, so each replica's replacement drops some."""
        for transport in TRANSPORTS:
            urls = Rotated(self.stack.urls, len(self.watches))
            watch = reconnecting(transport, urls, WATCH, {"id": job_id}, within=180)
            self.watches.append(asyncio.create_task(watch))

    async def workflow(self) -> None:
        """A workflow through the next replica; counted apart from the jobs (its steps are
        jobs the workflow makes, not submissions)."""
        url, _ = self._url()
        response = await self.http.post(
            f"{url}/graphql",
            json={
                "query": RUN_WORKFLOW,
                "variables": {"input": {"name": "rolling", "root": WORKFLOW}},
            },
        )
        body = response.json()
        assert "errors" not in body, body
        self.workflows.append(body["data"]["runWorkflow"]["id"])

    async def _read(self, query: str, item: str, within: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while True:
            url = self.stack.urls[0]
            response = await self.http.post(
                f"{url}/graphql", json={"query": query, "variables": {"id": item}}
            )
            found = next(iter(response.json()["data"].values()))
            if found is not None and found["done"]:
                return dict(found)
            assert time.monotonic() < deadline, f"{item} never finished: {found}"
            await asyncio.sleep(0.2)

    async def settle(self, valkey_url: str) -> None:
        """Every job's end, every subscriber's, every workflow's, every effect's count."""
        streams = await asyncio.gather(*self.watches)
        self.book.subscribers += len(streams)
        self.book.subscribers_ended += sum(
            s.completed and bool(s.jobs) and s.jobs[-1]["done"] for s in streams
        )
        reconnected = sum(len(s.starts) > 1 for s in streams)
        unsuccessful: list[str] = []
        for job in self.jobs:
            end = await self._read(STATE, job.job_id)
            self.book.terminal[end["state"]] += 1
            if end["state"] != "SUCCESS":
                unsuccessful.append(f"{job.kind} via {job.via}: {end}")
        failed = []
        for workflow_id in self.workflows:
            end = await self._read(WORKFLOW_STATE, workflow_id)
            if end["state"] != "SUCCESS":
                failed.append(end)

        client = redis.Redis.from_url(valkey_url, decode_responses=True)
        try:
            effects = [j for j in self.jobs if j.kind != "report"]
            runs = {j.job_id: client.llen(RUNS_KEY + j.job_id) for j in effects}
            applied = {j.job_id: client.llen(SPANS_KEY + j.job_id) for j in effects}
            formats = [client.hget(job_key(j.job_id), "v") for j in self.jobs]
        finally:
            client.close()
        self.book.reruns = sum(n > 1 for n in runs.values())
        self.book.duplicate_effects = sum(max(0, n - 1) for n in applied.values())
        scheduled = [j.job_id for j in self.jobs if j.kind == "scheduled"]
        not_once = {job_id: runs[job_id] for job_id in scheduled if runs[job_id] != 1}
        by_release = {v: sum(j.via == v for j in self.jobs) for v in {j.via for j in self.jobs}}
        self.book.notes += [
            f"jobs through {by_release}",
            f"{len(scheduled)} scheduled, {len(scheduled) - len(not_once)} ran once",
            f"{len(self.workflows)} workflows, {len(self.workflows) - len(failed)} SUCCESS",
            f"{reconnected} subscribers reconnected",
            f"records format 1: {formats.count(None)}, format 2: {formats.count('2')}",
        ]
        # Nothing in the load fails on its own: a job that did not succeed failed of the mix.
        assert not unsuccessful, f"{len(unsuccessful)} jobs did not succeed: {unsuccessful[:5]}"
        assert not not_once, f"scheduled jobs that did not run exactly once: {not_once}"
        assert not failed, f"workflows that did not succeed: {failed}"
        assert all(n >= 1 for n in applied.values()), "an effect job never did its effect"

    async def aclose(self) -> None:
        await self.http.aclose()


class Phases:
    """How long each phase took, for the ledger's notes."""

    def __init__(self, book: Ledger) -> None:
        self.book = book
        self.seen: list[str] = []

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        self.seen.append(f"{name} {time.monotonic() - started:.1f}")

    def note(self) -> None:
        self.book.notes.append("phases (s): " + ", ".join(self.seen))


async def _replace_api(stack: Stack, i: int, to: Release, phases: Phases) -> None:
    """Out of the rotation, SIGTERM (the replica drains: WebSockets closed with 1001, HTTP
    streams ended), then a replica of ``to`` on a new port in its place."""
    old = stack.apis[i]
    with phases.phase(f"API {i + 1} {old.release.version}->{to.version}"):
        stack.urls.remove(old.name)
        old.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(old.process.wait, 60)
        # uvicorn ends a graceful shutdown by raising the signal it caught again.
        assert code in (0, -signal.SIGTERM), (
            f"API {old.name} exited with {code}: {old.log.read_text()[-3000:]}"
        )
        new = await asyncio.to_thread(stack.start_api, to)
        stack.apis[i] = new
        stack.urls.insert(i, new.name)


async def _replace_worker(stack: Stack, i: int, to: Release, phases: Phases) -> None:
    """SIGTERM (warm shutdown: running jobs finish, nothing new is taken), then a worker of
    ``to``. The stop and the start are timed apart: a slow warm shutdown shows."""
    old = stack.workers[i]
    with phases.phase(f"worker {i + 1} {old.release.version} stop"):
        old.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(old.process.wait, SLOW_STOP)
        except subprocess.TimeoutExpired:
            # Its jobs take a second or two: say where a slow warm shutdown waits. Into the
            # checkout's var/, with the worker's log: pytest keeps only its last three
            # temporary folders, and a CI run makes more (a 34.7 s stop was lost so).
            kept = RELEASES.parent / "rolling-upgrade" / old.log.name
            kept.parent.mkdir(parents=True, exist_ok=True)
            _dump_stacks(old.process.pid, kept.with_suffix(".stacks"))
            code = await asyncio.to_thread(old.process.wait, 120)
            kept.write_bytes(old.log.read_bytes())
            phases.seen.append(f"(stacks of the slow stop in {kept.with_suffix('.stacks')})")
        assert code == 0, f"worker {old.name} exited with {code}: {old.log.read_text()[-3000:]}"
    with phases.phase(f"worker {i + 1} {to.version} start"):
        stack.workers[i] = await asyncio.to_thread(stack.start_worker, to)


def _dump_stacks(pid: int, into: Path) -> None:
    """Every thread's stack of ``pid`` and its pool processes (py-spy), appended to ``into``."""
    spy = str(Path(sys.executable).with_name("py-spy"))
    dump = subprocess.run([spy, "dump", "--subprocesses", "--pid", str(pid)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    with into.open("a") as out:
        out.write(f"--- {time.strftime('%H:%M:%S')} worker {pid} still stopping\n")
        out.write(dump.stdout + dump.stderr)


async def _roll(stack: Stack, before: Release, after: Release, book: Ledger) -> None:
    phases = Phases(book)
    with phases.phase(f"{before.version} up"):
        started = await asyncio.gather(
            *(asyncio.to_thread(stack.start_api, before) for _ in range(2)),
            *(asyncio.to_thread(stack.start_worker, before) for _ in range(WORKERS)),
        )
        stack.apis, stack.workers = list(started[:2]), list(started[2:])
        stack.urls[:] = [api.name for api in stack.apis]
    load = Load(stack, book)
    try:
        with phases.phase("rolling under load"):
            runner = asyncio.create_task(load.run())
            await load.workflow()  # all of the release before
            await asyncio.sleep(WARMUP)
            for i in range(len(stack.apis)):
                await _replace_api(stack, i, after, phases)
                await asyncio.sleep(BETWEEN)
            await load.workflow()  # the API after, the worker(s) before
            for i in range(len(stack.workers)):
                await _replace_worker(stack, i, after, phases)
                await asyncio.sleep(BETWEEN)
            await load.workflow()  # all of the release after
            await asyncio.sleep(TAIL)
            load.stopping.set()
            await runner
        with phases.phase("settled"):
            await load.settle(stack.valkey.url)
    finally:
        await load.aclose()
        for watch in load.watches:
            watch.cancel()
    phases.note()
    tracebacks = sum(log.read_text(errors="replace").count("Traceback") for log in stack.logs)
    book.notes.append(f"{tracebacks} tracebacks in the services' logs")


@pytest.mark.timeout(600)
async def test_a_rolling_upgrade_from_the_previous_release_loses_nothing(
    releases: tuple[Release, Release], stack: Stack, ledger: Ledger
) -> None:
    previous, this = releases
    made = previous.prepared
    ledger.notes.append(
        f"{previous.version} ({'cached' if made['cached'] else 'cold'}): worktree "
        f"{made['checkout']:.1f} s, make sync {made['sync']:.1f} s"
    )
    await _roll(stack, previous, this, ledger)
    ledger.settle()
    assert ledger.subscribers == ledger.subscribers_ended


# Half a minute more of one worker: make reliability runs it, make test the upgrade alone.
@pytest.mark.skipif(not FULL, reason="make reliability runs the downgrade (JOBQL_RELIABILITY=full)")
@pytest.mark.timeout(600)
async def test_a_rolling_downgrade_to_the_previous_release_loses_nothing(
    releases: tuple[Release, Release], stack: Stack, ledger: Ledger
) -> None:
    previous, this = releases
    await _roll(stack, this, previous, ledger)
    ledger.settle()
    assert ledger.subscribers == ledger.subscribers_ended
