"""Declaring a task once: a plain function with a Pydantic input model becomes a Celery task
and, through the API, a typed mutation, an ``enqueue`` target and an entry in ``tasks``.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task
from pydantic import BaseModel

from tasks.core import job_logs
from tasks.core.aio import run_coroutine
from tasks.core.canvas import receive
from tasks.core.progress import JobContext

# Task names of the system alone: Celery's built-ins and JobQL's internal tasks.
SYSTEM_PREFIXES = ("celery.", "jobql.")


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the API knows of a task: enough to validate, enqueue and describe it."""

    name: str
    description: str
    input_model: type[BaseModel] | None
    output_model: type[BaseModel] | None
    queue: str | None
    soft_time_limit: float | None
    time_limit: float | None
    max_retries: int | None
    rate_limit: str | None

    @property
    def typed(self) -> bool:
        """Typed tasks get their own mutation; plain Celery tasks only ``enqueue``."""
        return self.input_model is not None

    def input_schema(self) -> dict[str, Any]:
        if self.input_model is None:
            return {"type": "object", "additionalProperties": True}
        return self.input_model.model_json_schema(by_alias=True)

    def output_schema(self) -> dict[str, Any] | None:
        return self.output_model.model_json_schema(by_alias=True) if self.output_model else None

    def prepare(self, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Validate ``data``; return the Celery kwargs and the input as clients will read it.

        The kwargs leave out every field at its default (the worker's model fills it in
        again): a field added to an input since the previous release, always at its default
        unless the caller uses it, would otherwise reach that release's workers, whose
        models forbid unknown fields, and fail every such job during a rolling upgrade or a
        downgrade (GraphQL fills a typed mutation's defaults in, so the field is always
        there). The input as clients read it keeps every field.

        Raises pydantic's ``ValidationError`` with the offending fields.
        """
        if self.input_model is None:
            return dict(data), dict(data)
        model = self.input_model.model_validate(data)
        kwargs = model.model_dump(mode="json", exclude_defaults=True)
        return kwargs, model.model_dump(mode="json", by_alias=True)


def _model(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    return None


class TaskRegistry:
    """The tasks of one Celery app, with the models they were declared with."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._typed: dict[str, TaskSpec] = {}

    def job(
        self,
        *,
        name: str | None = None,
        queue: str | None = None,
        description: str | None = None,
        **celery_options: Any,
    ) -> Callable[[Callable[..., Any]], Any]:
        """Register ``fn(input: Model[, job: JobContext]) -> Output`` (sync or async)."""

        def decorate(fn: Callable[..., Any]) -> Any:
            task_name = name or fn.__name__
            params = list(inspect.signature(fn).parameters.values())
            hints = typing.get_type_hints(fn)
            input_model = _model(hints.get(params[0].name)) if params else None
            if input_model is None:
                raise TypeError(f"{task_name}: the first parameter must be a Pydantic model")
            wants_context = len(params) > 1
            is_async = inspect.iscoroutinefunction(fn)

            def run(task: Task, *received: Any, **kwargs: Any) -> Any:
                # A workflow's step gets the previous step's result positionally.
                data = input_model.model_validate(receive(received, kwargs))
                args = (data, JobContext(task)) if wants_context else (data,)
                if is_async:  # awaited on another thread: the job's context goes along
                    value = run_coroutine(job_logs.within(task.request.id, fn(*args)))
                else:
                    value = fn(*args)
                return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

            run.__name__, run.__qualname__ = fn.__name__, fn.__qualname__
            run.__module__, run.__doc__ = fn.__module__, fn.__doc__
            options = {"queue": queue} if queue else {}
            task = self.app.task(bind=True, name=task_name, **options, **celery_options)(run)
            self._typed[task_name] = TaskSpec(
                name=task_name,
                description=description or inspect.cleandoc(fn.__doc__ or ""),
                input_model=input_model,
                output_model=_model(hints.get("return")),
                queue=queue,
                soft_time_limit=celery_options.get("soft_time_limit"),
                time_limit=celery_options.get("time_limit"),
                max_retries=celery_options.get("max_retries"),
                rate_limit=celery_options.get("rate_limit"),
            )
            return task

        return decorate

    @property
    def typed(self) -> list[TaskSpec]:
        return sorted(self._typed.values(), key=lambda spec: spec.name)

    def get(self, name: str) -> TaskSpec | None:
        """A typed task, or a task registered the plain Celery way (input passed as kwargs).

        Celery's own tasks (``celery.*``) and JobQL's (``jobql.*``, such as the webhook
        delivery, whose messages only the system may write) are no caller's to start.
        """
        if name in self._typed:
            return self._typed[name]
        if name.startswith(SYSTEM_PREFIXES) or name not in self.app.tasks:
            return None
        task = self.app.tasks[name]
        return TaskSpec(
            name=name,
            description=inspect.cleandoc(task.__doc__ or ""),
            input_model=None,
            output_model=None,
            queue=getattr(task, "queue", None),
            soft_time_limit=task.soft_time_limit,
            time_limit=task.time_limit,
            max_retries=task.max_retries,
            rate_limit=task.rate_limit,
        )

    def all(self) -> list[TaskSpec]:
        names = set(self._typed) | {n for n in self.app.tasks if not n.startswith(SYSTEM_PREFIXES)}
        return [spec for n in sorted(names) if (spec := self.get(n)) is not None]
