"""``pauseQueue`` and ``resumeQueue``: a queue's consumers stopped and started on every worker by
Celery's ``cancel_consumer`` / ``add_consumer`` broadcasts (sent from the producer's threads: the
control API blocks, the event loop never does), and the pause remembered in Redis so that a worker
starting meanwhile leaves the queue alone (:mod:`tasks.core.paused_queues`). Jobs sent to a
paused queue wait in the broker and run once it is resumed; a message a worker had already
reserved (prefetched) before the pause still runs there.
"""

from __future__ import annotations

from gql.services.errors import BadUserInput
from gql.services.producer import Producer
from gql.services.workers import QueueState, WorkerDirectory
from tasks.core import records
from tasks.core.paused_queues import PAUSE_SCRIPT, RESUME_SCRIPT, held_key, pause_note, paused_key


class QueueControl:
    def __init__(self, producer: Producer, directory: WorkerDirectory) -> None:
        self._producer = producer
        self._directory = directory
        self._client = directory.client
        self._settings = directory.settings

    def _known(self, name: str) -> str:
        if name not in self._directory.known_queues:
            known = ", ".join(self._directory.known_queues)
            raise BadUserInput.field("name", f"unknown queue {name!r}; known: {known}")
        return name

    async def pause(self, name: str, by: str) -> QueueState:
        """Remember the pause, then stop every worker's consumer of ``name``. Pausing a
        paused queue changes nothing but tells the workers again."""
        self._known(name)
        live = await self._directory.read_workers()
        consuming = [w["name"] for w in live if name in w["queues"]]
        note = pause_note(by, records.now())
        keys = [paused_key(self._settings), held_key(self._settings, name)]
        await self._client.eval(PAUSE_SCRIPT, len(keys), *keys, name, note, *consuming)
        await self._producer.consumers("cancel_consumer", name, None, len(live))
        return await self._state(name)

    async def resume(self, name: str) -> QueueState:
        """Forget the pause, then restart the consumer of ``name`` on the workers that held it
        back (those that consumed it when it was paused, and those started since). Resuming a
        queue that is not paused changes nothing."""
        self._known(name)
        keys = [paused_key(self._settings), held_key(self._settings, name)]
        reply = await self._client.eval(RESUME_SCRIPT, len(keys), *keys, name)
        workers = [str(w) for w in reply[1:]] if reply else []
        if workers:
            await self._producer.consumers("add_consumer", name, workers, len(workers))
        return await self._state(name)

    async def _state(self, name: str) -> QueueState:
        self._directory.forget()
        return next(q for q in await self._directory.queues() if q.name == name)
