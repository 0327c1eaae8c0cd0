"""Workflow records read and written on the API's async Redis client, beside the job store.
Each owner's workflows are also in an index per tag (scored by creation time), which
``workflows`` pages newest first, the way the job indexes are paged."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from gql.services.store import JobStore
from tasks.core import records, scripts, slots
from tasks.core.records import JobSnapshot
from tasks.core.workflow_records import WorkflowSnapshot, workflow_index_key, workflow_key

Watched = tuple[WorkflowSnapshot, list[JobSnapshot]]


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
        if steps:
            index = workflow_index_key(steps[0].owner, slots.tag_of(workflow_id))
            await self.client.zrem(index, workflow_id)

    async def page(
        self, owner: str | None, limit: int, before: tuple[int, str] | None
    ) -> list[tuple[int, Watched]]:
        """Up to ``limit`` workflows of ``owner`` (None: every owner's) created before the
        cursor ``before`` (score, id), newest first, each with its score. Entries whose
        record expired are skipped and taken out of their index."""
        indexes: list[str] = []
        for tag in slots.tags():
            if owner is not None:
                indexes.append(workflow_index_key(owner, tag))
            else:
                owners: set[str] = await self.client.smembers(records.owners_key(tag))  # type: ignore[assignment]
                indexes += [workflow_index_key(str(o), tag) for o in sorted(owners)]
        top = f"({before[0]}" if before else "+inf"
        found: list[list[tuple[str, float]]] = await asyncio.gather(  # type: ignore[assignment]
            *(
                self.client.zrevrangebyscore(i, top, "-inf", start=0, num=limit, withscores=True)
                for i in indexes
            )
        )
        entries = sorted(
            ((int(score), str(member), index) for index, rows in zip(indexes, found, strict=True)
             for member, score in rows),
            reverse=True,
        )  # fmt: skip
        page: list[tuple[int, Watched]] = []
        for score, workflow_id, index in entries:
            if len(page) == limit:
                break
            watched = await self.get(workflow_id)
            if watched is None:
                await self.client.zrem(index, workflow_id)
            else:
                page.append((score, watched))
        return page

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
