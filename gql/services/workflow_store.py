"""Workflow records read and written on the API's async Redis client, beside the job store."""

from __future__ import annotations

import redis.asyncio as aioredis

from gql.services.store import JobStore
from tasks.core import records, scripts
from tasks.core.records import JobSnapshot
from tasks.core.workflow_records import WorkflowSnapshot, workflow_key


class WorkflowStore:
    def __init__(self, jobs: JobStore, ttl: int) -> None:
        self.jobs = jobs
        self.client: aioredis.Redis = jobs.client
        self._ttl = ttl
        self._create = self.client.register_script(scripts.CREATE_WORKFLOW_SCRIPT)

    async def create(self, workflow: dict[str, str], steps: list[dict[str, str]]) -> None:
        """The workflow's record and every step's, in one atomic call."""
        call = scripts.create_workflow_call(workflow, steps, ttl=self._ttl)
        await self._create(keys=call.keys, args=call.args)

    async def discard(self, workflow_id: str, steps: list[JobSnapshot]) -> None:
        """Undo :meth:`create` when the canvas could not be sent."""
        for step in steps:
            await self.jobs.discard(step)
        await self.client.delete(workflow_key(workflow_id))

    async def get(self, workflow_id: str) -> tuple[WorkflowSnapshot, list[JobSnapshot]] | None:
        """The workflow and its steps as they were at one instant (one MULTI)."""
        fields: dict[str, str] = await self.client.hgetall(workflow_key(workflow_id))  # type: ignore[assignment]
        if not fields:
            return None
        step_ids = WorkflowSnapshot.from_hash(fields).steps
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(workflow_key(workflow_id))
            for step in step_ids:
                pipe.hgetall(records.job_key(step))
            rows: list[dict[str, str]] = await pipe.execute()
        if not rows[0]:
            return None
        steps = [JobSnapshot.from_hash(row) for row in rows[1:] if row]
        return WorkflowSnapshot.from_hash(rows[0]), steps
