"""A job's log lines are read only for a caller who may see the job (gql.services.jobs)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from celery import Celery

from gql.services.jobs import JobService
from gql.services.producer import Producer
from gql.services.store import JobStore
from tasks.core import timeline
from tasks.core.registry import TaskRegistry
from tasks.core.settings import Settings


class Lines:
    """A store holding one line for every job, counting its reads."""

    def __init__(self) -> None:
        self.reads: list[tuple[str, int]] = []

    async def logs(self, job_id: str, last: int) -> list[str]:
        self.reads.append((job_id, last))
        return ['[1765432100000,30,"disk almost full"]']


def service(store: Lines) -> JobService:
    producer = cast(Producer, SimpleNamespace(direct=True))
    registry = TaskRegistry(Celery("test", set_as_current=False))
    return JobService(Settings(), cast(JobStore, store), producer, registry)


async def test_an_owner_reads_their_jobs_lines_and_no_one_elses() -> None:
    store = Lines()
    jobs = service(store)

    (line,) = await jobs.logs("job-1", "ada", "ada")
    assert (line.level, line.message) == (30, "disk almost full")
    assert await jobs.logs("job-2", "bob", "ada") == []  # read nothing at all
    assert await jobs.logs("job-3", "bob", None, last=5) != []  # an admin sees every owner's
    assert await jobs.logs("job-4", "ada", "ada", last=0) == []
    await jobs.logs("job-5", "ada", "ada", last=10_000)
    expected: list[Any] = [
        ("job-1", timeline.LOG_LINES_KEPT),
        ("job-3", 5),
        ("job-5", timeline.LOG_LINES_KEPT),
    ]
    assert store.reads == expected
