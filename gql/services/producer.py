"""Celery's producer behind one async facade: its calls block, so they run on a thread pool,
through producer-side apps that never subscribe to a result channel (see :mod:`tasks.core.app`),
and it carries the control commands (revoke, a broker ping) too. A broker that accepts
connections and never answers would hold each publish for the socket timeout and queue the rest
behind it, so a publish answers within ``JOBQL_PUBLISH_TIMEOUT``, and once one failed the next
fail at once, without I/O, for ``_BROKER_DOWN_FOR`` seconds.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from amqp.exceptions import MessageNacked
from celery import Celery
from celery.canvas import Signature

from gql.services.errors import ServiceUnavailable
from tasks.core.app import create_celery_app, ready_result_backend
from tasks.core.message_writer import writes_messages
from tasks.core.messages import job_headers
from tasks.core.rabbitmq import priority
from tasks.core.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Delivery:
    """When and where a message goes: Celery's ``apply_async`` options that JobQL exposes."""

    queue: str
    countdown: float | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    priority: int | None = None


def send_task(
    app: Celery,
    broker_url: str,
    task: str,
    job_id: str,
    kwargs: dict[str, Any],
    to: Delivery,
    owner: str | None = None,
) -> None:
    """Celery's producer with a job's delivery options (its format and owner in headers, see
    ``tasks.core.messages.job_headers``); the one place both the API's and the blocking enqueue
    send through, so JobQL's priority means the same on every broker (RabbitMQ's runs the
    other way: ``tasks.core.rabbitmq.priority``)."""
    app.send_task(
        task,
        kwargs=kwargs,
        task_id=job_id,
        queue=to.queue,
        countdown=to.countdown,
        eta=to.eta,
        expires=to.expires,
        priority=priority(broker_url, to.priority),
        headers=job_headers(owner),
    )


_BROKER_DOWN_FOR = 1.0  # seconds a failed publish makes the next ones fail without trying


def _nacked(exc: BaseException | None) -> bool:
    """A publish RabbitMQ's confirm refused (kombu re-raises it as ``OperationalError``)."""
    while exc is not None:
        if isinstance(exc, MessageNacked):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Producer:
    def __init__(self, settings: Settings) -> None:
        self.app = create_celery_app(settings, producer=True)
        # The broker is the Redis holding the records: the API writes messages itself, in
        # the same atomic call as the record (see tasks.core.messages). Otherwise Celery does.
        self.direct = writes_messages(self.app, settings)
        # Workflows go through Celery's canvas, whose chords need the result backend.
        ready_result_backend(settings)
        self.canvas_app = create_celery_app(settings, producer=True, canvas=True)
        self._broker_url = settings.broker
        self._timeout = settings.connect_timeout
        self._publish_timeout = settings.publish_timeout
        self._down_until = 0.0  # monotonic time until which the broker counts as down
        self._pool = ThreadPoolExecutor(
            max_workers=settings.producer_threads, thread_name_prefix="jobql-producer"
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` on the producer's threads, in the caller's context: the span current here
        is the parent of what the thread does (Celery's publish, traced by
        :mod:`tasks.core.tracing`), as ``asyncio.to_thread`` would have it."""
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, lambda: context.run(fn, *args, **kwargs))

    async def publish(
        self,
        task: str,
        job_id: str,
        kwargs: dict[str, Any],
        to: Delivery,
        owner: str | None = None,
    ) -> None:
        """Send one task message within the publish timeout.

        Raises :class:`ServiceUnavailable` (or kombu's ``OperationalError``) if the broker
        is down or does not answer in time. A publish that timed out may still land if the
        broker wakes up before its socket times out: its worker then adopts the job.
        """

        def send() -> None:
            if time.monotonic() < self._down_until:
                raise ServiceUnavailable("the broker is unavailable")
            try:
                send_task(self.app, self._broker_url, task, job_id, kwargs, to, owner)
            except Exception as exc:
                if _nacked(exc):
                    # RabbitMQ's confirm said no (a full queue, a node going away): the
                    # message is not there, and the broker itself is up.
                    raise ServiceUnavailable("the broker refused the message") from None
                self._down_until = time.monotonic() + _BROKER_DOWN_FOR
                raise

        if time.monotonic() < self._down_until:  # not even queued behind blocked threads
            raise ServiceUnavailable("the broker is unavailable")
        try:
            await asyncio.wait_for(self._run(send), self._publish_timeout)
        except TimeoutError:
            self._down_until = time.monotonic() + _BROKER_DOWN_FOR
            raise ServiceUnavailable("the broker did not answer in time") from None

    async def send_canvas(self, build: Callable[[Celery], Signature]) -> None:
        """Apply a canvas: Celery builds every message (chain and chord headers) itself."""
        await self._run(lambda: build(self.canvas_app).apply_async())

    async def revoke(self, job_ids: str | list[str], *, terminate: bool) -> None:
        """One broadcast for one job or many (Celery's revoke takes a list)."""
        await self._run(self.app.control.revoke, job_ids, terminate=terminate)

    async def consumers(
        self, command: str, queue: str, destination: list[str] | None, expected: int
    ) -> list[str]:
        """Celery's ``cancel_consumer`` or ``add_consumer`` broadcast for ``queue`` (to
        ``destination``, or every worker), on a thread: the names of the workers that answered
        within the connect timeout (as soon as ``expected`` did)."""
        control = self.app.control
        call = control.cancel_consumer if command == "cancel_consumer" else control.add_consumer
        replies = await self._run(
            call,
            queue,
            destination=destination,
            reply=True,
            timeout=self._timeout,
            limit=expected or None,
        )
        return sorted(name for reply in replies or [] for name in reply)

    async def ping_broker(self) -> float:
        """Seconds a fresh broker connection takes to answer."""

        def ping() -> float:
            started = time.perf_counter()
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=self._timeout)
            return time.perf_counter() - started

        return await self._run(ping)

    async def workers(self) -> list[str]:
        """Names of the workers that answered a ping within the connect timeout."""
        replies = await self._run(self.app.control.ping, timeout=self._timeout)
        return sorted(name for reply in replies or [] for name in reply)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.app.close()
        self.canvas_app.close()
