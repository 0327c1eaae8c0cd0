"""A job's timeline and log lines (tasks.core.timeline) as the worker writes them, in this
process, on the session's Valkey: the scripts' bounds, merging and expiry, and what a record
costs in Redis."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import pytest
import redis

from devtools.valkey import EmbeddedValkey
from tasks.core import events, job_logs, records, redis_clients, timeline
from tasks.core.aio import run_coroutine
from tasks.core.records import JobSnapshot, JobState
from tasks.core.settings import get_settings


@pytest.fixture
def client(valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """This process as a worker process is, on the session's Valkey."""
    monkeypatch.setenv("JOBQL_REDIS_URL", valkey.url)
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    get_settings.cache_clear()
    connection = redis.Redis.from_url(valkey.url, decode_responses=True)
    try:
        yield connection
    finally:
        connection.close()
        monkeypatch.undo()
        redis_clients._worker_client = None
        get_settings.cache_clear()


def queued() -> str:
    fields = records.new_record(
        job_id=str(uuid.uuid4()),
        task="timeline.test",
        owner="ada",
        queue="jobql",
        input_json={},
        created_at=records.now(),
    )
    assert events.create(fields) is None
    return fields["id"]


def read(client: redis.Redis, job_id: str) -> tuple[JobSnapshot, list[timeline.Entry]]:
    snapshot = JobSnapshot.from_hash(client.hgetall(records.job_key(job_id)))  # type: ignore[arg-type]
    return snapshot, timeline.entries(snapshot.events, snapshot.worker, snapshot.error)


def states(entries: list[timeline.Entry]) -> list[str]:
    return [entry.state.value for entry in entries]


def test_a_plain_run_is_three_entries_and_its_record_stays_compact(client: redis.Redis) -> None:
    job = queued()
    worker = "celery@jobql-worker-7d9f8b6c5"  # a long name: the latest start's is not repeated
    assert events.started(job, "timeline.test", 0, {}, "jobql", worker) == "ok"
    events.succeeded(job, "timeline.test", {"ok": True})

    snapshot, entries = read(client, job)
    assert states(entries) == ["PENDING", "STARTED", "SUCCESS"]
    assert [e.attempt for e in entries] == [0, 1, 1]
    assert [e.worker for e in entries] == [None, worker, worker]
    assert entries[0].at == snapshot.created_at.replace(
        microsecond=snapshot.created_at.microsecond // 1000 * 1000
    )
    assert entries[0].at <= entries[1].at <= entries[2].at
    assert all(e.message is None and e.count == 1 for e in entries)
    # Every value of the record fits a listpack entry (64 bytes): Redis keeps the hash
    # compact, where one longer value would make it a hash table twice the size.
    assert len(snapshot.events) <= 64
    assert client.object("encoding", records.job_key(job)) == "listpack"


def test_a_thousand_progress_reports_are_one_entry_between_the_changes(
    client: redis.Redis,
) -> None:
    job = queued()
    events.started(job, "timeline.test", 0, {}, "jobql", "w1")
    for step in range(1, 1001):
        events.progressed(job, "timeline.test", {"current": step, "total": 1000})
    events.retrying(job, "timeline.test", 1, ConnectionError("mail server busy"))
    events.started(job, "timeline.test", 1, {}, "jobql", "w2")
    events.progressed(job, "timeline.test", {"current": 1, "total": 2, "message": "halfway"})
    events.failed(job, "timeline.test", ValueError("no such address"))

    _, entries = read(client, job)
    assert states(entries) == [
        "PENDING", "STARTED", "PROGRESS", "RETRY", "STARTED", "PROGRESS", "FAILURE"
    ]  # fmt: skip
    progress = entries[2]
    assert (progress.count, progress.message, progress.attempt, progress.worker) == (
        1000,
        "1000/1000",
        1,
        "w1",
    )
    retry = entries[3]
    assert (retry.message, retry.attempt, retry.worker) == (
        "ConnectionError: mail server busy",
        1,
        "w1",
    )
    assert (entries[4].attempt, entries[4].worker) == (2, "w2")
    assert (entries[5].message, entries[5].count) == ("halfway", 1)
    # The final state's message is the record's error, not stored twice.
    assert entries[6].message == "ValueError: no such address"
    assert [e.at for e in entries] == sorted(e.at for e in entries)


def test_a_long_timeline_is_cut_into_fields_that_keep_the_record_compact(
    client: redis.Redis,
) -> None:
    job = queued()
    events.started(job, "timeline.test", 0, {}, "jobql", "w1")
    events.retrying(job, "timeline.test", 1, ConnectionError("serveur occupé " * 12))
    events.started(job, "timeline.test", 1, {}, "jobql", "w1")
    key = records.job_key(job)
    assert client.object("encoding", key) == "listpack"
    events.progressed(job, "timeline.test", {"current": 1, "message": "é" * 150})

    stored = client.hgetall(key)  # decoded: no piece ends inside a character
    pieces = [
        stored["events"],
        *(stored[f"events:{n}"] for n in range(2, 20) if f"events:{n}" in stored),
    ]
    assert len(pieces) > 5 and all(len(p.encode()) <= timeline.PIECE_BYTES for p in pieces)
    _, entries = read(client, job)
    assert entries[2].message == timeline.note("ConnectionError: " + "serveur occupé " * 12)
    assert entries[-1].message == "é" * 150

    # A shorter timeline (the progress entry's message replaced) leaves no stale piece.
    events.progressed(job, "timeline.test", {"current": 2, "message": "short"})
    now = client.hgetall(key)
    assert sorted(f for f in now if f.startswith("events:")) == [
        f"events:{n}" for n in range(2, len([f for f in now if f.startswith("events")]) + 1)
    ]
    assert len(now) < len(stored)
    _, entries = read(client, job)
    assert (entries[-1].message, entries[-1].count) == ("short", 2)


def test_a_lost_worker_and_its_rerun_show_both_workers(client: redis.Redis) -> None:
    job = queued()
    events.started(job, "timeline.test", 0, {}, "jobql", "w1")
    events.started(job, "timeline.test", 0, {}, "jobql", "w2")  # w1 died mid-run
    events.succeeded(job, "timeline.test", None)

    _, entries = read(client, job)
    assert [(e.state.value, e.attempt, e.worker) for e in entries] == [
        ("PENDING", 0, None),
        ("STARTED", 1, "w1"),
        ("STARTED", 2, "w2"),
        ("SUCCESS", 2, "w2"),
    ]
    assert entries[2].message == "worker lost: a run ended without an outcome"


def test_the_timeline_keeps_the_newest_entries_with_their_times_and_workers(
    client: redis.Redis,
) -> None:
    job = queued()
    for attempt in range(60):
        events.started(job, "timeline.test", attempt, {}, "jobql", f"w{attempt}")
        events.retrying(job, "timeline.test", attempt + 1, ValueError(f"try {attempt}"))
    events.started(job, "timeline.test", 60, {}, "jobql", "w60")
    snapshot, entries = read(client, job)
    assert len(entries) == timeline.EVENTS_KEPT
    # 122 entries were made (queued, 60 starts and retries, a start): the 22 oldest went,
    # and the first one kept still knows its run and worker.
    assert (entries[0].state, entries[0].attempt, entries[0].worker) == (
        JobState.RETRY,
        11,
        "w10",
    )
    assert entries[0].message == "ValueError: try 10"
    assert (entries[-2].message, entries[-2].worker) == ("ValueError: try 59", "w59")
    assert (entries[-1].state, entries[-1].attempt, entries[-1].worker) == (
        JobState.STARTED,
        61,
        "w60",
    )
    assert snapshot.created_at <= entries[0].at <= entries[-1].at


def test_log_lines_are_bounded_streamed_and_expire_with_the_record(client: redis.Redis) -> None:
    job = queued()
    watcher = client.pubsub()
    watcher.subscribe(records.job_channel(job))
    watcher.get_message(timeout=1)
    events.started(job, "timeline.test", 0, {}, "jobql", "w1")
    watcher.get_message(timeout=1)

    assert events.logged(job, "x" * 5000, logging.INFO) == "ok"
    message = watcher.get_message(timeout=1)
    assert message is not None, "a line publishes the record on the job's channel"
    published = json.loads(message["data"])
    assert published == client.hgetall(records.job_key(job))
    assert published["sequence"] == "2", "a line is a change of the job"
    for line in range(1, timeline.LOG_LINES_KEPT + 5):
        events.logged(job, f"line {line}", logging.WARNING)

    key = timeline.logs_key(job)
    stored = timeline.log_lines(client.lrange(key, 0, -1))  # type: ignore[arg-type]
    assert len(stored) == timeline.LOG_LINES_KEPT
    assert [line.message for line in stored[:2]] == ["line 5", "line 6"]
    assert stored[-1].level == logging.WARNING
    assert client.hget(records.job_key(job), "logs_dropped") == "5"
    assert 0 <= client.pttl(records.job_key(job)) - client.pttl(key) < 1000

    events.succeeded(job, "timeline.test", None)  # renews the record's TTL, and the lines'
    assert (
        client.ttl(key) == client.ttl(records.job_key(job)) == get_settings().job_retention_seconds
    )
    assert events.logged(job, "too late", logging.INFO) == "SUCCESS"
    assert client.llen(key) == timeline.LOG_LINES_KEPT
    watcher.close()


def test_a_long_line_is_cut_and_a_job_that_logs_nothing_has_no_list(client: redis.Redis) -> None:
    job = queued()
    events.started(job, "timeline.test", 0, {}, "jobql", "w1")
    events.logged(job, "é" * 5000, logging.INFO)
    (line,) = timeline.log_lines(client.lrange(timeline.logs_key(job), 0, -1))  # type: ignore[arg-type]
    assert len(line.message) == timeline.LOG_LINE_CHARS and line.message.endswith("…")

    quiet = queued()
    events.started(quiet, "timeline.test", 0, {}, "jobql", "w1")
    events.succeeded(quiet, "timeline.test", None)
    assert not client.exists(timeline.logs_key(quiet))
    assert events.logged(str(uuid.uuid4()), "nobody's", logging.INFO) == "missing"


def test_python_logging_in_a_running_job_becomes_its_lines(client: redis.Redis) -> None:
    job = queued()
    events.started(job, "timeline.test", 0, {}, "jobql", "w1")
    mine, theirs = logging.getLogger("reports.build"), logging.getLogger("celery.app.trace")

    async def body() -> None:  # an async def body, awaited on another thread's loop
        mine.error("fetched %d rows", 3)

    try:
        with job_logs.capturing(job):
            mine.warning("cache cold for %s", "ada")
            theirs.warning("the worker's own line")
            run_coroutine(job_logs.within(job, body()))
        mine.warning("after the run")
    finally:
        logging.getLogger().removeHandler(job_logs._handler)

    lines = timeline.log_lines(client.lrange(timeline.logs_key(job), 0, -1))  # type: ignore[arg-type]
    assert [(line.level, line.message) for line in lines] == [
        (logging.WARNING, "cache cold for ada"),
        (logging.ERROR, "fetched 3 rows"),
    ]


def test_levels_are_named_or_numbered() -> None:
    assert timeline.level_number("Warning") == logging.WARNING
    assert timeline.level_number(15) == 15
    with pytest.raises(ValueError, match="unknown log level"):
        timeline.level_number("loud")
