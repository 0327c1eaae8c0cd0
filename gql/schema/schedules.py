"""The schedule fields of the schema: ``schedules``, ``schedule(id)`` and the mutations that
create, change, enable, disable and delete schedules (beat reads them: ``tasks.worker.beat``)."""

from __future__ import annotations

from typing import Annotated

import strawberry
from strawberry.scalars import JSON
from strawberry.types.field import StrawberryField

from gql.schema.context import Info
from gql.schema.schedule_types import Schedule, ScheduleOptions, ScheduleTiming, schedule_request
from gql.services.schedules import ScheduleService

ScheduleId = Annotated[
    strawberry.ID, strawberry.argument(description="The schedule's id (`Schedule.id`).")
]
Name = Annotated[str, strawberry.argument(description="A name unique among your schedules.")]
Task = Annotated[
    str, strawberry.argument(description='A registered task name, e.g. "generate_report".')
]
TimingArgument = Annotated[ScheduleTiming, strawberry.argument(description="When it runs.")]
RunOptions = Annotated[
    ScheduleOptions | None,
    strawberry.argument(description="Where its runs go; defaults when omitted."),
]


def _service(info: Info) -> ScheduleService:
    service = info.context.schedules
    assert service is not None, "the app's lifespan starts the schedule service"
    return service


@strawberry.type
class ScheduleQuery:
    @strawberry.field(description="Your periodic schedules, by name.")
    async def schedules(self, info: Info) -> list[Schedule]:
        return [Schedule.from_record(r) for r in await _service(info).list(info.context.scope)]

    @strawberry.field(description="A schedule by id; null when unknown or not yours.")
    async def schedule(self, info: Info, id: ScheduleId) -> Schedule | None:
        found = await _service(info).get(str(id), info.context.scope)
        return Schedule.from_record(found) if found else None


async def create_schedule(
    info: Info,
    name: Name,
    task: Task,
    timing: TimingArgument,
    input: Annotated[
        JSON, strawberry.argument(description="The input of every run, camelCase keys.")
    ] = JSON({}),  # noqa: B008
    enabled: Annotated[
        bool, strawberry.argument(description="Start running it now (false: create it paused).")
    ] = True,
    options: RunOptions = None,
) -> Schedule:
    owner = await info.context.admitted()
    request = schedule_request(
        name=name, task=task, input=input, timing=timing, options=options, enabled=enabled
    )
    return Schedule.from_record(await _service(info).create(request, owner))


async def update_schedule(
    info: Info,
    id: ScheduleId,
    name: Annotated[str | None, strawberry.argument(description="A new name.")] = None,
    task: Annotated[
        str | None,
        strawberry.argument(description="Another task; the input is checked against it."),
    ] = None,
    input: Annotated[
        JSON | None, strawberry.argument(description="A new input for every run.")
    ] = None,
    timing: Annotated[
        ScheduleTiming | None,
        strawberry.argument(description="A new timing; it counts from now."),
    ] = None,
    options: RunOptions = None,
) -> Schedule:
    await info.context.admitted()
    request = schedule_request(name=name, task=task, input=input, timing=timing, options=options)
    found = await _service(info).update(str(id), request, info.context.scope)
    return Schedule.from_record(found)


async def enable_schedule(info: Info, id: ScheduleId) -> Schedule:
    await info.context.admitted()
    request = schedule_request(enabled=True)
    return Schedule.from_record(await _service(info).update(str(id), request, info.context.scope))


async def disable_schedule(info: Info, id: ScheduleId) -> Schedule:
    await info.context.admitted()
    request = schedule_request(enabled=False)
    return Schedule.from_record(await _service(info).update(str(id), request, info.context.scope))


async def delete_schedule(info: Info, id: ScheduleId) -> Schedule:
    await info.context.admitted()
    return Schedule.from_record(await _service(info).delete(str(id), info.context.scope))


def schedule_mutations() -> list[StrawberryField]:
    return [
        strawberry.mutation(
            create_schedule,
            name="createSchedule",
            description="Run a task periodically: beat starts it as a new job, owned by you, "
            "at every tick. The input is validated by the task's model.",
        ),
        strawberry.mutation(
            update_schedule,
            name="updateSchedule",
            description="Change what is given; beat follows within JOBQL_BEAT_INTERVAL.",
        ),
        strawberry.mutation(
            enable_schedule,
            name="enableSchedule",
            description="Run it again from its next tick (missed ticks are not caught up).",
        ),
        strawberry.mutation(
            disable_schedule,
            name="disableSchedule",
            description="Stop running it, keeping it; a run already sent still happens.",
        ),
        strawberry.mutation(
            delete_schedule,
            name="deleteSchedule",
            description="Delete it; its past runs stay as jobs. Returns it as it was.",
        ),
    ]
