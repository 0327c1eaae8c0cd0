"""The worker's writer of job records (tasks.core.events), in this process, on a Valkey of its own.

A Valkey of its own: the test counts the update script's calls in Valkey's command
statistics, which no other test's worker may add to.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core import events, records, redis_clients, slots
from tasks.core.records import JobState
from tasks.core.settings import get_settings


@pytest.fixture
def own_valkey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """This process as a worker process is, on a fresh Valkey."""
    server = EmbeddedValkey(tmp_path / "valkey", persist=False).start()
    monkeypatch.setenv("JOBQL_REDIS_URL", server.url)
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    get_settings.cache_clear()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()
        get_settings.cache_clear()
        server.stop()


def queued(owner: str, task: str = "send_email") -> str:
    """A PENDING job of ``owner``, recorded as the API records one."""
    fields = records.new_record(
        job_id=str(uuid.uuid4()),
        task=task,
        owner=owner,
        queue="jobql",
        input_json={"to": "ada@example.com"},
        created_at=records.now(),
    )
    assert events.create(fields) is None
    return fields["id"]


SCRIPT_CALLS = ("evalsha", "eval")


def update_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in SCRIPT_CALLS)


def test_a_worker_starts_an_owners_next_job_in_one_call(own_valkey: redis.Redis) -> None:
    first, second = queued("ada"), queued("ada")
    assert events.started(first, "send_email", 0, {}, "jobql", "w1") == "ok"
    events.succeeded(first, "send_email", {"sent": True})

    before = update_calls(own_valkey)
    assert events.started(second, "send_email", 0, {}, "jobql", "w1") == "ok"
    assert update_calls(own_valkey) - before == 1  # the owner was known: no refused call

    # Another owner's job of the same task is guessed wrong, told the right owner, and
    # started all the same: a wrong guess costs one call, never a wrong record.
    other = queued("bob")
    before = update_calls(own_valkey)
    assert events.started(other, "send_email", 0, {}, "jobql", "w1") == "ok"
    assert update_calls(own_valkey) - before == 2
    running = records.index_key("bob", slots.tag_of(other), state=JobState.STARTED)
    assert own_valkey.zrange(running, 0, -1) == [other]


def test_each_change_publishes_the_record_it_leaves(own_valkey: redis.Redis) -> None:
    job = queued("ada")
    watcher = own_valkey.pubsub()
    watcher.subscribe(records.job_channel(job))
    watcher.get_message(timeout=1)  # the subscription's confirmation

    def published() -> dict[str, str]:
        message = watcher.get_message(timeout=2)
        assert message is not None and message["type"] == "message"
        event: dict[str, str] = json.loads(message["data"])
        return event

    assert events.started(job, "send_email", 0, {}, "jobql", "w1") == "ok"
    started = published()
    assert started == own_valkey.hgetall(records.job_key(job))
    assert (started["state"], started["sequence"], started["attempts"]) == ("STARTED", "1", "1")
    assert started["worker"] == "w1" and started["started_at"]

    # The message is delivered again while the record says it runs: the first run's worker
    # was lost. The start counts a second attempt and the lost run, and keeps the first
    # start's time.
    assert events.started(job, "send_email", 0, {}, "jobql", "w2") == "ok"
    again = published()
    assert again == own_valkey.hgetall(records.job_key(job))
    assert (again["sequence"], again["attempts"], again["lost"]) == ("2", "2", "1")
    assert again["started_at"] == started["started_at"] and again["redelivery"]

    events.succeeded(job, "send_email", {"sent": True})
    done = published()
    assert done == own_valkey.hgetall(records.job_key(job))
    assert (done["state"], done["sequence"], done["result"]) == ("SUCCESS", "3", '{"sent":true}')
    assert done["finished_at"] and done["error"] == ""
    watcher.close()


def test_a_job_whose_message_names_its_owner_starts_in_one_call(own_valkey: redis.Redis) -> None:
    """Another owner's job of the same task needs no guess when its message names the owner
    (tasks.core.messages.OWNER_HEADER); a wrong name is refused and corrected, as a guess is."""
    first = queued("ada")
    assert events.started(first, "send_email", 0, {}, "jobql", "w1") == "ok"

    other = queued("bob")
    before = update_calls(own_valkey)
    assert events.started(other, "send_email", 0, {}, "jobql", "w1", owner="bob") == "ok"
    assert update_calls(own_valkey) - before == 1

    forged = queued("carol")
    before = update_calls(own_valkey)
    assert events.started(forged, "send_email", 0, {}, "jobql", "w1", owner="bob") == "ok"
    assert update_calls(own_valkey) - before == 2
    running = records.index_key("carol", slots.tag_of(forged), state=JobState.STARTED)
    assert own_valkey.zrange(running, 0, -1) == [forged]
    assert not own_valkey.zscore(
        records.index_key("bob", slots.tag_of(forged), state=JobState.STARTED), forged
    )
