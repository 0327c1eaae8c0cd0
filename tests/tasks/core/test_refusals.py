"""A Redis that answers but refuses writes is named in words an operator can act on: here a
real replica (a node a failover demoted), which answers READONLY to every write."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core.refusals import write_refusal


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[redis.Redis]:
    primary = EmbeddedValkey(tmp_path / "primary", persist=False).start()
    secondary = EmbeddedValkey(tmp_path / "replica", persist=False).start()
    client = redis.Redis.from_url(secondary.url)
    try:
        host, port = primary.url.split("//", 1)[1].split("/", 1)[0].split(":")
        client.replicaof(host, port)
        yield client
    finally:
        client.close()
        secondary.stop()
        primary.stop()


def test_a_write_to_a_replica_is_named_a_read_only_refusal(replica: redis.Redis) -> None:
    with pytest.raises(redis.exceptions.ResponseError) as refused:
        replica.set("jobql:probe", "1")
    reason = write_refusal(refused.value)
    assert reason is not None and reason.startswith("Redis is a read-only replica: READONLY")


def test_other_errors_are_not_refusals(replica: redis.Redis) -> None:
    with pytest.raises(redis.exceptions.ResponseError) as wrong:
        replica.execute_command("NO.SUCH.COMMAND")
    assert write_refusal(wrong.value) is None
