"""A Redis crash loses about a second of jobs at most; a Redis that would lose more says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core.durability import durability_warnings
from tests.conftest import ROOT


@pytest.fixture
def volatile(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    server = EmbeddedValkey(tmp_path / "volatile", persist=False).start()
    yield server
    server.stop()


def test_the_embedded_valkey_keeps_a_job_written_a_second_before_it_was_killed(
    tmp_path: Path,
) -> None:
    server = EmbeddedValkey(tmp_path / "valkey").start()
    try:
        client = redis.Redis.from_url(server.url)
        client.hset("jobql:job:crash-test", mapping={"state": "PENDING"})
        client.lpush("jobql", "the job's message")
        client.close()
        time.sleep(1.5)  # appendfsync everysec: written to disk within a second
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        server.process = None

        server.start()
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert client.hget("jobql:job:crash-test", "state") == "PENDING"
        assert client.lrange("jobql", 0, -1) == ["the job's message"]
        assert durability_warnings(client) == []
        client.close()
    finally:
        server.stop()


def test_a_redis_without_persistence_or_with_eviction_is_warned_about(
    volatile: EmbeddedValkey,
) -> None:
    client = redis.Redis.from_url(volatile.url)
    try:
        (warning,) = durability_warnings(client)
        assert "no data across a restart" in warning

        client.config_set("maxmemory-policy", "allkeys-lru")
        warnings = durability_warnings(client)
        assert any("allkeys-lru" in w and "noeviction" in w for w in warnings)
    finally:
        client.close()


def test_jobql_check_warns_but_does_not_fail_on_a_volatile_redis(
    volatile: EmbeddedValkey, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "JOBQL_ENV": "test",
           "JOBQL_REDIS_URL": volatile.url}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "gql.cli", "check"], capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warn  Redis at" in result.stdout
    assert "appendonly yes" in result.stdout
