"""Redis that answers but refuses writes: memory at ``maxmemory``, or a disk it cannot save to.

Either way an enqueue is told ``SERVICE_UNAVAILABLE`` at once and leaves nothing behind (no
record, no index entry, no message), ``/health/ready`` and ``jobql check`` say why, and once
there is room again the next enqueue runs, with no restart of anything.

A stack of this module's own (a Valkey that lets its ``dir`` be changed, a worker, the API):
the pressure does not reach the session's services.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core.messages import PRIORITY_STEPS, queue_key
from tasks.core.settings import Settings
from tests.conftest import ROOT, running_api, running_worker, service_env
from tests.support.ledger import Ledger

pytestmark = pytest.mark.slow

ENQUEUE = 'mutation { processData(input: {data: "p", delay: 0}) { id } }'
WORKFLOW = """mutation { runWorkflow(input: { root: { chain: [
  { task: { name: "process_data", input: { data: 1, delay: 0 } } }
  { task: { name: "process_data", input: { data: 2, delay: 0 } } }
] } }) { id } }"""
STATE = "query($id: ID!) { job(id: $id) { state } }"
# What a refusal may take, on a machine whose two cores other test runs share: Redis
# answers a refused write at once, so this is the request's own HTTP and GraphQL.
PROMPT = 1.0
FILLER = "pressure:filler:"


@dataclass(frozen=True)
class Stack:
    valkey: EmbeddedValkey
    api_url: str
    env: dict[str, str]
    data_dir: Path  # the API's and the worker's logs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("pressure")
    # Protected configs on loopback: the disk story moves ``dir``, as an operator would.
    valkey = EmbeddedValkey(
        data_dir / "valkey", persist=False, extra=("--enable-protected-configs", "local")
    ).start()
    env = service_env(valkey.url, data_dir, JOBQL_HEALTH_CACHE_SECONDS="0")
    settings = Settings(redis_url=valkey.url, data_dir=data_dir, env="test")
    try:
        with (
            running_worker(env, data_dir, settings, concurrency=1),
            running_api(env, data_dir) as api,
        ):
            yield Stack(valkey, api.base_url, env, data_dir)
    finally:
        valkey.stop()


def _client(stack: Stack) -> redis.Redis:
    return redis.Redis.from_url(stack.valkey.url, decode_responses=True)


def _census(client: redis.Redis) -> dict[str, int]:
    """What an enqueue writes: records, index entries and messages (queued or held)."""
    keys = list(client.scan_iter("jobql:*", count=1000))
    records = [k for k in keys if k.startswith(("jobql:job:", "jobql:workflow:"))]
    indexes = [k for k in keys if k.startswith(("jobql:index:", "jobql:workflows:"))]
    queues = [queue_key(q, p) for q in Settings(env="test").queues for p in PRIORITY_STEPS]
    return {
        "records": sum(1 for k in records if not k.endswith((":unsent", ":logs"))),
        "index entries": sum(int(client.zcard(k)) for k in indexes),
        "messages": sum(int(client.llen(k)) for k in queues) + int(client.hlen("unacked")),
    }


@dataclass
class Refused:
    seconds: float
    codes: list[str]
    ready: tuple[int, str]
    check: tuple[int, str]


async def _refused(stack: Stack, http: httpx.AsyncClient) -> Refused:
    """A job and a workflow asked for while Redis refuses writes, and what the probes say."""
    seconds, codes = 0.0, []
    for mutation in (ENQUEUE, WORKFLOW):
        started = time.monotonic()
        body = (await http.post("/graphql", json={"query": mutation})).json()
        seconds = max(seconds, time.monotonic() - started)
        codes += [e.get("extensions", {}).get("code", "") for e in body.get("errors") or [{}]]
    ready = await http.get("/health/ready")
    check = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gql.cli", "check",
        env=stack.env, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    said, _ = await asyncio.wait_for(check.communicate(), 60)
    return Refused(
        seconds, codes, (ready.status_code, ready.text), (check.returncode, said.decode())
    )


async def _runs_again(http: httpx.AsyncClient, since: float) -> tuple[float, float]:
    """Seconds from ``since`` to the first enqueue accepted, and to its job's SUCCESS."""
    deadline = since + 15
    while True:
        body = (await http.post("/graphql", json={"query": ENQUEUE})).json()
        if not body.get("errors"):
            job_id = body["data"]["processData"]["id"]
            break
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.02)
    accepted = time.monotonic() - since
    while True:
        body = await http.post("/graphql", json={"query": STATE, "variables": {"id": job_id}})
        if body.json()["data"]["job"]["state"] == "SUCCESS":
            return accepted, time.monotonic() - since
        assert time.monotonic() < deadline + 15, body.text
        await asyncio.sleep(0.02)


async def _warm(http: httpx.AsyncClient) -> None:
    """One job end to end first: the API has measured Redis's clock, the worker is up."""
    accepted, _ = await _runs_again(http, time.monotonic())
    assert accepted < 5


def _fill(client: redis.Redis) -> int:
    """Filler keys until Redis refuses one for memory; how many it took. Large ones first,
    then small ones to the brim. The limit is then held 1 MB under what is used: Redis
    shrinks idle clients' buffers on its own a moment later (the filler's own, 64 KB and
    more) and keys expire (a heartbeat), and either made room for a write to slip in."""
    filled = 0
    for size in (65536, 64):
        with contextlib.suppress(redis.exceptions.OutOfMemoryError):
            while True:
                client.set(f"{FILLER}{filled}", "x" * size)
                filled += 1
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 1_000_000)
    return filled


def _judge(
    stack: Stack, refused: Refused, reason: str, before: dict[str, int], after: dict[str, int]
) -> None:
    assert refused.codes == ["SERVICE_UNAVAILABLE"] * 2, refused
    assert refused.seconds < PROMPT, f"the refusal took {refused.seconds:.2f} s"
    assert after == before, "a refused enqueue left something behind"
    status, body = refused.ready
    assert status == 503 and reason in body, body
    code, output = refused.check
    assert code == 1 and reason in output, output
    for log in stack.data_dir.glob("*.log"):  # told as warnings, neither a bug nor a crash
        assert "Traceback" not in log.read_text(errors="replace"), log.name


def _settle(ledger: Ledger, note: str) -> None:
    """Each story: a job and a workflow refused, then one job accepted that ran."""
    ledger.submitted = 3
    ledger.rejected["SERVICE_UNAVAILABLE"] = 2
    ledger.terminal["SUCCESS"] = 1
    ledger.notes.append(note)
    ledger.settle()


@dataclass
class FullDisk:
    """How Valkey's ``dir`` was made a place it cannot save to, and how room comes back."""

    how: str
    make_room: Callable[[], None]


@contextlib.contextmanager
def _full_disk(client: redis.Redis, base: Path) -> Iterator[FullDisk]:
    """Valkey's ``dir`` moved to a small tmpfs filled to the last byte, where this process
    may mount one (as root); else to a directory then removed from under it, as a volume
    that went away: its saves fail all the same, and room comes back as a new directory.
    Its own ``dir`` is given back at the end."""
    home = str(client.config_get("dir")["dir"])
    path = base / "full"
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    client.config_set("dir", str(path))
    try:
        if mounted.returncode == 0:
            filler = path / "filler"
            with contextlib.suppress(OSError), filler.open("wb") as out:
                while True:
                    out.write(b"x" * 4096)
                    out.flush()
            yield FullDisk("a 256 KB tmpfs filled up", filler.unlink)
        else:
            path.rmdir()

            def make_room() -> None:
                path.mkdir()
                client.config_set("dir", str(path))

            yield FullDisk("its directory removed (no tmpfs mount allowed here)", make_room)
    finally:
        client.config_set("dir", home)
        if mounted.returncode == 0:
            subprocess.run(["umount", str(path)], check=False)


def _bgsave(client: redis.Redis) -> str:
    """Run a background save to its end; 'ok' or 'err'."""
    client.bgsave()
    while int(client.info("persistence")["rdb_bgsave_in_progress"]):
        time.sleep(0.02)
    return str(client.info("persistence")["rdb_last_bgsave_status"])


async def test_redis_at_maxmemory_refuses_each_enqueue_at_once_and_recovers_when_freed(
    stack: Stack, ledger: Ledger
) -> None:
    client = _client(stack)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        await _warm(http)
        before = _census(client)
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used + 4_000_000)
        try:
            filled = _fill(client)
            refused = await _refused(stack, http)
            after = _census(client)
            freed = time.monotonic()
            for start in range(0, filled, 500):
                client.unlink(*(f"{FILLER}{i}" for i in range(start, min(filled, start + 500))))
            accepted, ran = await _runs_again(http, freed)
        finally:
            client.config_set("maxmemory", 0)
            client.close()

    _judge(stack, refused, "maxmemory", before, after)
    _settle(
        ledger,
        f"{filled} filler keys (4 MB) to maxmemory (noeviction); a job and a workflow "
        f"refused in at most {refused.seconds * 1000:.0f} ms, nothing written; after the "
        f"filler went, accepted {accepted:.2f} s and SUCCESS {ran:.2f} s later, no restart",
    )


async def test_redis_that_cannot_save_to_a_full_disk_refuses_each_enqueue_and_recovers_with_room(
    stack: Stack, ledger: Ledger, tmp_path: Path
) -> None:
    client = _client(stack)
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as http:
        await _warm(http)
        before = _census(client)
        # Snapshots on, as the embedded Valkey of `make run` has them: a failed one stops
        # writes (stop-writes-on-bgsave-error, on by default).
        client.config_set("save", "60 1000")
        client.config_set("stop-writes-on-bgsave-error", "yes")
        try:
            with _full_disk(client, tmp_path) as disk:
                assert _bgsave(client) == "err"
                refused = await _refused(stack, http)
                after = _census(client)
                room = time.monotonic()
                disk.make_room()
                assert _bgsave(client) == "ok"
                saved = time.monotonic() - room
                accepted, ran = await _runs_again(http, room)
        finally:
            client.config_set("save", "")
            client.close()

    _judge(stack, refused, "MISCONF", before, after)
    _settle(
        ledger,
        f"BGSAVE failed on {disk.how}; a job and a workflow refused in at most "
        f"{refused.seconds * 1000:.0f} ms, nothing written; room made and BGSAVE ok in "
        f"{saved:.2f} s, then accepted {accepted:.2f} s and SUCCESS {ran:.2f} s after the "
        "room, no restart",
    )
