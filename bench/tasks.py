"""Tasks used only by the benchmarks: loaded with JOBQL_TASK_MODULES when a bench runs.

They go to their own queue, the only one the benchmark's worker consumes: jobs enqueued to
measure throughput wait untouched, so no worker competes with the API for the CPU.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from pydantic import Field

from tasks.core.app import job
from tasks.core.models import JobModel
from tasks.core.progress import JobContext


class TickInput(JobModel):
    ticks: int = Field(ge=1, le=1_000_000)
    interval: float = Field(ge=0, le=60)


class TickOutput(JobModel):
    ticks: int


@job(name="bench.tick", queue="bench")
def tick(input: TickInput, job: JobContext) -> TickOutput:
    """Report progress ``ticks`` times, each stamped with the wall clock at report time."""
    start = time.monotonic()
    for n in range(1, input.ticks + 1):
        delay = start + n * input.interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        job.progress(n, input.ticks, data={"sentAt": time.time()})
    return TickOutput(ticks=input.ticks)


class StampInput(JobModel):
    sent_at: float = Field(description="Wall clock when the producer sent the message.")


@job(name="bench.stamp", queue="bench")
def stamp(input: StampInput) -> StampInput:
    """Do nothing: the worker's start time, recorded on the job, is what is measured."""
    return input


class FanoutInput(JobModel):
    job_ids: list[str] = Field(max_length=20_000)
    seconds: float = Field(gt=0, le=600)
    senders: int = Field(default=1, ge=1, le=64)  # threads sharing the schedule


@job(name="bench.fanout", queue="bench")
def fanout(input: FanoutInput) -> FanoutInput:
    """Report progress on every job in ``job_ids`` once a second, spread evenly, through
    the same record-and-publish step a task's own progress report takes; the schedule is
    shared by a few threads, as many running jobs would share it."""
    from tasks.core import events
    from tasks.core.records import JobState

    count = len(input.job_ids)
    start = time.monotonic()
    rounds = int(input.seconds)
    senders = input.senders

    def report(first: int) -> None:
        for second in range(rounds):
            for n in range(first, count, senders):
                delay = start + second + n / count - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                meta = {"current": second + 1, "total": rounds, "data": {"sentAt": time.time()}}
                events.transition(
                    input.job_ids[n],
                    JobState.PROGRESS,
                    events.progress_fields(meta),
                    task="process_data",
                )

    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(report, range(senders)))
    return input


class TrivialInput(JobModel):
    n: int


@job(name="bench.trivial", queue="bench")
def trivial(input: TrivialInput) -> TrivialInput:
    """P10: nothing but being a job; the baseline is ``plain.trivial``."""
    return input


class ProgressInput(JobModel):
    reports: int = Field(ge=1, le=100_000)


class ProgressOutput(JobModel):
    seconds: float


@job(name="bench.progress", queue="bench")
def progress(input: ProgressInput, job: JobContext) -> ProgressOutput:
    """P10's second half: ``reports`` calls of ``job.progress``, timed inside the body."""
    began = time.perf_counter()
    for n in range(1, input.reports + 1):
        job.progress(n, input.reports)
    return ProgressOutput(seconds=time.perf_counter() - began)
