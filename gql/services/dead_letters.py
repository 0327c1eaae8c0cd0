"""``deadLetters``, ``requeueDeadLetter`` and ``discardDeadLetter``: the messages workers set aside
(:mod:`tasks.core.dead_letters`), read from the records' Redis where the worker's consumer keeps
them. An entry is named by a digest of its text, so its id holds across calls while entries come
and go around it; each is shown to the owner its message names (the ``jobql_owner`` header), an
entry that names none to admins only.

Requeueing puts the original message back on its queue (a fresh delivery tag), in one script that
also takes the entry off the list, so two requeues of one entry put back one message. A message
whose job already failed because it was set aside would be skipped by the worker (a finished job
never runs again): that job is retried instead, as ``retryJob`` would (once, whoever asks).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gql.services.errors import BadUserInput, NotFound
from gql.services.jobs import JobService
from tasks.core import dead_letters
from tasks.core.dead_letters import DEAD_LETTER_KEY, DeadLetter
from tasks.core.messages import queue_key
from tasks.core.records import JobState

_CHUNK = 100  # entries read per round trip while scanning the list (kept: at most 1000)
# The error types a worker fails a job with when it sets its message aside.
_SET_ASIDE = frozenset({dead_letters.NOT_REGISTERED, dead_letters.INVALID})

# KEYS: the dead-letter list, the queue's list.  ARGV: the entry, the message to put back.
# Returns 1 when the entry was there (and the message is back on its queue), else 0.
REQUEUE_SCRIPT = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Requeued:
    """A requeued entry: the job that will run, on which queue, and the job it retries when
    the message's own job had already failed for being set aside."""

    entry: DeadLetter
    job_id: str
    queue: str
    retry_of: str | None


def encode_cursor(index: int, entry_id: str) -> str:
    return base64.urlsafe_b64encode(f"{index}:{entry_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        index, _, entry_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        return int(index), entry_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadUserInput.field("after", "not a cursor this API gave out") from None


class DeadLetters:
    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs
        self._client: Any = jobs.store.client

    async def page(
        self, scope: str | None, first: int, after: str | None
    ) -> tuple[list[tuple[int, DeadLetter]], bool]:
        """Up to ``first`` entries the caller may see, newest first, after the cursor; and
        whether more follow. The cursor is the entry's place and id: if entries were taken
        off before it meanwhile, the scan finds it again by id."""
        start = 0
        if after is not None:
            start = await self._resume(*decode_cursor(after))
        found: list[tuple[int, DeadLetter]] = []
        async for index, entry in self._scan(start):
            if _visible(entry, scope):
                found.append((index, entry))
                if len(found) > first:
                    break
        return found[:first], len(found) > first

    async def _resume(self, index: int, entry_id: str) -> int:
        """Where the page after the entry ``entry_id``, last seen at ``index``, starts."""
        text = await self._client.lindex(DEAD_LETTER_KEY, index)
        if text is not None and dead_letters.entry_id(text) == entry_id:
            return index + 1
        async for place, entry in self._scan(0):
            if entry.id == entry_id:
                return place + 1
        return index  # the entry is gone: go on from where it was

    async def _scan(self, start: int) -> AsyncIterator[tuple[int, DeadLetter]]:
        index = start
        while True:
            chunk = await self._client.lrange(DEAD_LETTER_KEY, index, index + _CHUNK - 1)
            for text in chunk:
                yield index, dead_letters.read(text)
                index += 1
            if len(chunk) < _CHUNK:
                return

    async def find(self, entry_id: str, scope: str | None) -> DeadLetter:
        """The entry, if the caller may see it; NOT_FOUND otherwise (the two are one answer)."""
        async for _, entry in self._scan(0):
            if entry.id == entry_id and _visible(entry, scope):
                return entry
        raise NotFound(f"no dead letter {entry_id!r}")

    async def discard(self, entry_id: str, scope: str | None) -> DeadLetter:
        entry = await self.find(entry_id, scope)
        if not await self._client.lrem(DEAD_LETTER_KEY, 1, entry.text):
            raise NotFound(f"no dead letter {entry_id!r}")
        return entry

    async def requeue(self, entry_id: str, scope: str | None) -> Requeued:
        entry = await self.find(entry_id, scope)
        if entry.message is None:
            raise BadUserInput.field("id", f"this message cannot be requeued: {entry.unreadable}")
        job_id = str(entry.message["headers"]["id"])
        record = await self._jobs.store.get(job_id)
        if record is not None and scope is not None and record.owner != scope:
            raise NotFound(f"no dead letter {entry_id!r}")
        if record is not None and record.done:
            kind = (record.error or {}).get("type")
            if record.state is not JobState.FAILURE or kind not in _SET_ASIDE:
                raise BadUserInput.field(
                    "id", f"its job {job_id} is {record.state} already; a finished job never reruns"
                )
            # Its job failed because the message was set aside: a worker would skip the
            # message now, so the job is retried in its place, once (JobService.retry).
            retry = await self._jobs.retry(job_id, None)
            await self._client.lrem(DEAD_LETTER_KEY, 1, entry.text)
            return Requeued(entry, retry.id, retry.queue, job_id)
        if not self._jobs.producer.direct:
            raise BadUserInput.field(
                "id",
                "a message is put back only on a Redis broker that also holds the job records; "
                "here, retry its job or send it again",
            )
        queue = entry.queue or entry.message["properties"]["delivery_info"]["routing_key"]
        body = dead_letters.requeued(entry.message, queue)
        target = queue_key(queue, dead_letters.priority_of(entry.message))
        keys = [DEAD_LETTER_KEY, target]
        moved = await self._client.eval(REQUEUE_SCRIPT, len(keys), *keys, entry.text, body)
        if not moved:
            raise NotFound(f"no dead letter {entry_id!r}")
        return Requeued(entry, job_id, queue, None)


def _visible(entry: DeadLetter, scope: str | None) -> bool:
    """Admins (scope None) see every entry; an owner those whose message names it."""
    return scope is None or (entry.owner is not None and entry.owner == scope)
