"""A worker that starts while one of its queues is paused (``pauseQueue``) does not consume it:
once Celery has chosen the worker's queues (``-Q``, ``-X``, the settings) and before its consumer
starts, the paused ones are left out and the worker is recorded as holding them back
(:mod:`tasks.core.paused_queues`), so ``resumeQueue``'s ``add_consumer`` reaches it. A resume
that came while it was starting, before it listened to broadcasts, is caught up once it is ready.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import worker_init, worker_ready

from tasks.core import redis_clients
from tasks.core.paused_queues import HOLD_SCRIPT, hold_keys, paused_key
from tasks.core.settings import get_settings

logger = logging.getLogger(__name__)

# The queues this process's worker left out at start (one worker per process).
_held: list[str] = []


def consumed(worker: Any) -> list[str]:
    """The queues ``worker`` is set to consume now."""
    return sorted(worker.app.amqp.queues.consume_from)


@worker_init.connect
def _hold_paused(sender: Any = None, **_: Any) -> None:
    worker = sender
    if worker is None or not hasattr(worker, "hostname"):
        return
    settings = get_settings()
    queues = consumed(worker)
    try:
        held = redis_clients.worker_client().eval(
            HOLD_SCRIPT,
            len(queues) + 1,
            *hold_keys(settings, queues),
            worker.hostname,
            *queues,
        )
    except redis.RedisError as exc:
        # The heartbeat and every job need this Redis too: the worker says so on its own.
        logger.warning("could not read the paused queues (%s); consuming %s", exc, queues)
        return
    _held[:] = [str(name) for name in held]
    if _held:
        worker.app.amqp.queues.deselect(_held)
        logger.warning("queue(s) %s paused: not consuming them until resumed", ", ".join(_held))


@worker_ready.connect
def _catch_up(sender: Any = None, **_: Any) -> None:
    """Once the worker listens to broadcasts: consume the held queues resumed while it was
    starting, and leave out those paused meanwhile (their broadcast came too early for it)."""
    consumer = sender
    if consumer is None:
        return
    settings = get_settings()
    try:
        client = redis_clients.worker_client()
        still = client.hmget(paused_key(settings), _held) if _held else []
        queues = [name for name in consumed(consumer) if name not in _held]
        paused = client.eval(
            HOLD_SCRIPT, len(queues) + 1, *hold_keys(settings, queues), consumer.hostname, *queues
        )
    except redis.RedisError as exc:
        logger.warning("could not read the paused queues again (%s)", exc)
        return
    for name, note in zip(list(_held), still, strict=True):
        if note is None:
            logger.info("queue %s was resumed while this worker started", name)
            consumer.add_task_queue(name)
            _held.remove(name)
    for name in map(str, paused):
        logger.warning("queue %s was paused while this worker started: not consuming it", name)
        consumer.cancel_task_queue(name)
        _held.append(name)
