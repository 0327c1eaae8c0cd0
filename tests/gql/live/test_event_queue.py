"""A subscriber's bounded event queue, in process: what a slow reader is owed, and no more."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from gql.live.broadcast import RESYNC, EventQueue, Resync
from tasks.core.records import JobSnapshot, JobState

STARTED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def snapshot(job_id: str, state: JobState, sequence: int, current: int = 0) -> JobSnapshot:
    return JobSnapshot(
        id=job_id, task="generate_report", owner="anonymous", queue="jobql", state=state,
        sequence=sequence, retries=0, input={}, result=None, error=None,
        progress={"current": current, "total": 100} if state is JobState.PROGRESS else None,
        created_at=STARTED_AT, started_at=STARTED_AT, finished_at=None, idempotency_key=None,
    )  # fmt: skip


def progress(job_id: str, sequence: int) -> JobSnapshot:
    return snapshot(job_id, JobState.PROGRESS, sequence, current=sequence)


async def drain(queue: EventQueue) -> list[JobSnapshot | Resync]:
    items = []
    while len(queue):
        items.append(await queue.get())
    return items


def seen(items: list[JobSnapshot | Resync]) -> list[tuple[str, int] | Resync]:
    return [
        item if isinstance(item, Resync) else (item.state.value, item.sequence) for item in items
    ]


async def test_waiting_progress_is_replaced_by_the_latest_in_its_place() -> None:
    queue = EventQueue(limit=8)
    queue.put(snapshot("a", JobState.STARTED, 1))
    for sequence in range(2, 7):
        queue.put(progress("a", sequence))

    items = await drain(queue)

    assert seen(items) == [("STARTED", 1), ("PROGRESS", 6)]
    assert isinstance(items[1], JobSnapshot) and items[1].progress == {"current": 6, "total": 100}


async def test_state_changes_are_never_merged() -> None:
    queue = EventQueue(limit=8)
    for sequence, state in enumerate(
        [JobState.PENDING, JobState.STARTED, JobState.RETRY, JobState.STARTED, JobState.SUCCESS]
    ):
        queue.put(snapshot("a", state, sequence))

    assert seen(await drain(queue)) == [
        ("PENDING", 0), ("STARTED", 1), ("RETRY", 2), ("STARTED", 3), ("SUCCESS", 4),
    ]  # fmt: skip


async def test_progress_after_a_state_change_queues_after_it() -> None:
    queue = EventQueue(limit=8)
    queue.put(progress("a", 1))
    queue.put(snapshot("a", JobState.RETRY, 2))
    queue.put(progress("a", 3))
    queue.put(progress("a", 4))

    assert seen(await drain(queue)) == [("PROGRESS", 1), ("RETRY", 2), ("PROGRESS", 4)]


async def test_each_job_keeps_its_own_latest_progress() -> None:
    queue = EventQueue(limit=8)
    queue.put(progress("a", 1))
    queue.put(progress("b", 1))
    queue.put(progress("a", 2))
    queue.put(progress("b", 2))

    items = await drain(queue)

    assert [(i.id, i.sequence) for i in items if isinstance(i, JobSnapshot)] == [("a", 2), ("b", 2)]


async def test_progress_taken_by_the_reader_is_not_replaced_afterwards() -> None:
    queue = EventQueue(limit=8)
    queue.put(progress("a", 1))
    first = await queue.get()
    queue.put(progress("a", 2))

    assert isinstance(first, JobSnapshot) and first.sequence == 1
    assert seen(await drain(queue)) == [("PROGRESS", 2)]


async def test_overflow_becomes_one_resync_and_the_queue_stays_bounded() -> None:
    queue = EventQueue(limit=4)
    for sequence in range(10):
        queue.put(snapshot(f"job-{sequence}", JobState.PENDING, 0))

    assert queue.high_water <= 4
    items = await drain(queue)
    assert items[0] is RESYNC, "past the limit the reader re-reads snapshots instead"
    assert sum(isinstance(item, Resync) for item in items) == 1
    assert len(items) <= 4


async def test_a_resync_replaces_whatever_was_waiting() -> None:
    queue = EventQueue(limit=8)
    queue.put(snapshot("a", JobState.STARTED, 1))
    queue.put(progress("a", 2))
    queue.put(RESYNC)
    queue.put(progress("a", 3))

    assert seen(await drain(queue)) == [RESYNC, ("PROGRESS", 3)]


async def test_a_reader_waits_until_something_arrives() -> None:
    queue = EventQueue(limit=8)
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not reader.done()

    queue.put(snapshot("a", JobState.SUCCESS, 5))

    item = await asyncio.wait_for(reader, 1)
    assert isinstance(item, JobSnapshot) and item.state is JobState.SUCCESS
