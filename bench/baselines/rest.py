"""The baseline: the reference guide's FastAPI + Celery REST endpoints, written as it writes them.

``POST /api/process`` calls ``task.delay(data)`` inline in an ``async def`` handler and
``GET /api/task/{id}`` reads ``AsyncResult``; both block the event loop, which is the point
of measuring them. ``POST /api/process-threadpool`` is the same call moved to a thread, the
fair baseline for latency at a fixed rate. Run with
``uvicorn bench.baselines.rest:app`` and ``BENCH_REDIS_URL`` set.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

celery = Celery("rest_baseline", broker=REDIS_URL, backend=REDIS_URL)
celery.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    enable_utc=True,
    task_track_started=True,
    task_default_queue="jobql",
)


class TaskRequest(BaseModel):
    data: Any


class TaskResponse(BaseModel):
    task_id: str
    status: str
    message: str


class TaskStatusResponse(BaseModel):
    task_id: str
    status: str
    result: Any = None
    progress: Any = None


app = FastAPI(title="REST baseline")


@app.post("/api/process", response_model=TaskResponse)
async def submit_task(request: TaskRequest) -> TaskResponse:
    task = celery.send_task("process_data", kwargs={"data": request.data, "delay": 0})
    return TaskResponse(task_id=task.id, status="queued", message="Task submitted")


@app.post("/api/process-threadpool", response_model=TaskResponse)
async def submit_task_threadpool(request: TaskRequest) -> TaskResponse:
    task = await run_in_threadpool(
        celery.send_task, "process_data", kwargs={"data": request.data, "delay": 0}
    )
    return TaskResponse(task_id=task.id, status="queued", message="Task submitted")


@app.get("/api/task/{task_id}", response_model=TaskStatusResponse)
async def get_task_status(task_id: str) -> TaskStatusResponse:
    result = AsyncResult(task_id, app=celery)
    response = TaskStatusResponse(task_id=task_id, status=result.state.lower())
    if result.state == "PROGRESS":
        response.progress = result.info
    elif result.state == "SUCCESS":
        response.result = result.result
    elif result.state == "FAILURE":
        response.result = {"error": str(result.info)}
    return response


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}
