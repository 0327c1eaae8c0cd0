"""A job's run lease (tasks.core.run_lease), in this process, on a Valkey of its own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core import liveness, redis_clients, run_lease
from tasks.core.settings import get_settings


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """This process as a pool process of a worker is, on a fresh Valkey."""
    server = EmbeddedValkey(tmp_path / "valkey", persist=False).start()
    monkeypatch.setenv("JOBQL_REDIS_URL", server.url)
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    get_settings.cache_clear()
    liveness.begin_incarnation()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        get_settings.cache_clear()
        server.stop()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_delivery_finds_the_running_run_s_lease(client: redis.Redis) -> None:
    job = str(uuid.uuid4())
    assert run_lease.take(client, job) is None

    def second_delivery() -> run_lease.Holder | None:  # a threads pool's other thread
        found = run_lease.take(client, job)
        run_lease.release(client, job)  # its run ends: not the lease of the one still on
        return found

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(second_delivery).result()

    assert holder is not None
    assert client.exists(run_lease.lease_key(job))
    assert holder.token == client.get(run_lease.lease_key(job))
    assert 0 < holder.lapses_in <= run_lease.lease_seconds()
    run_lease.release(client, job)
    assert not client.exists(run_lease.lease_key(job))
    assert run_lease.take(client, job) is None, "released: the next delivery runs"
    run_lease.release(client, job)


def test_a_lease_left_by_a_dead_process_of_this_worker_is_taken_over(client: redis.Redis) -> None:
    job = str(uuid.uuid4())
    left = f"{liveness.incarnation()}:{_dead_pid()}:abc"
    client.set(run_lease.lease_key(job), left, px=60_000)

    assert run_lease.take(client, job) is None
    assert client.get(run_lease.lease_key(job)) != left
    run_lease.release(client, job)


def test_a_lease_of_another_worker_is_waited_out_until_it_lapses(client: redis.Redis) -> None:
    job = str(uuid.uuid4())
    client.set(run_lease.lease_key(job), f"another:{_dead_pid()}:abc", px=60_000)

    holder = run_lease.take(client, job)

    assert holder is not None and holder.token.startswith("another:")
    client.pexpire(run_lease.lease_key(job), 1)
    client.delete(run_lease.lease_key(job))
    assert run_lease.take(client, job) is None
    run_lease.release(client, job)


def test_a_long_run_renews_its_lease_and_never_renews_another_s(client: redis.Redis) -> None:
    job, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert run_lease.take(client, job) is None
    assert run_lease.take(client, other) is None
    client.pexpire(run_lease.lease_key(job), 50)
    client.delete(run_lease.lease_key(other))  # lapsed while Redis was away
    # The run of ``job`` is still ours; ``other``'s lease was taken by another run since.
    client.set(run_lease.lease_key(other), "another:1:abc")

    run_lease.Renewer().renew(client, interval=0)

    assert client.pttl(run_lease.lease_key(job)) > 1000
    assert client.get(run_lease.lease_key(other)) == "another:1:abc"
    run_lease.release(client, job)
    run_lease.release(client, other)
    assert client.get(run_lease.lease_key(other)) == "another:1:abc", "not ours to release"
