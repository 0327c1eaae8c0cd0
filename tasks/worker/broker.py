"""kombu's Redis (and Sentinel) transport, made to survive a broken broker connection while
late-acked tasks run: stock kombu 5.7.0 let the worker exit when Redis restarted, ran a job twice
at once after a reconnect (issue 13), died on one envelope of the wrong shape, and died when
Redis refused writes (a BRPOP answered MISCONF by a Redis that cannot save). Here a dead
channel's restore and ack are skipped (kombu restores the messages after ``visibility_timeout``),
running jobs' messages are held and settled on a fresh connection when the run ends, an
unreadable envelope is set aside on ``DEAD_LETTER_KEY``, and a refusal is waited out.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from queue import Empty
from typing import Any

import redis
from celery.worker import state as worker_state
from kombu.connection import Connection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from tasks.core import events
from tasks.core.dead_letters import DEAD_LETTER_KEY as DEAD_LETTER_KEY  # the list's format
from tasks.core.dead_letters import DEAD_LETTERS_KEPT as DEAD_LETTERS_KEPT
from tasks.core.dead_letters import dead_letter_entry as dead_letter_entry
from tasks.core.dead_letters import envelope as envelope
from tasks.core.refusals import write_refusal
from tasks.core.settings import get_settings

logger = logging.getLogger(__name__)

# Seconds between two BRPOPs while Redis refuses writes (out of memory, a disk it cannot save
# to): a consumer resumes within about this much of Redis taking writes again.
REFUSED_PAUSE = 1.0


def _named(raw: bytes) -> dict[str, str]:
    """The job id and task an unreadable envelope still names, if any."""
    try:
        headers = json.loads(raw).get("headers")
        return {k: v for k in ("id", "task") if isinstance(v := headers.get(k), str) and v}
    except Exception:  # not JSON, not an object, no headers object: it names nothing
        return {}


def settings_of(client: Connection) -> dict[str, Any]:
    """A broker connection's settings, to open another like it (a pooled one cannot clone)."""
    return dict(client.info())  # type: ignore[no-untyped-call]


def running_tags() -> set[Any]:
    """The delivery tags of the requests this worker's pool runs, or is handing to a child.

    A request is active once its pool process said it started. Just before that, prefork's
    pool may have begun writing it to a child: Celery's reconnect finishes such writes
    (``AsynPool.flush``), so the child runs it too.
    """
    tags = set()
    for request in (*worker_state.active_requests, *worker_state.reserved_requests):
        message = getattr(request, "message", None)
        if message is None or request.acknowledged:
            continue
        if request in worker_state.active_requests or _handed_to_a_child(request):
            tags.add(message.delivery_tag)
    return tags


def _handed_to_a_child(request: Any) -> bool:
    reference = getattr(request, "_apply_result", None)
    job = reference() if reference is not None else None
    return getattr(job, "_write_to", None) is not None


class QoS(kombu_redis.QoS):
    """Running jobs' messages are held across a reconnect; a dead channel's acks left to Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._held: set[Any] = set()
        # The channel's connection settings, read while it lives (no I/O): held messages
        # are acknowledged through a connection opened from them once this one is closed.
        client = getattr(getattr(self.channel, "connection", None), "client", None)
        self._spare: dict[str, Any] | None = settings_of(client) if client is not None else None

    def _connection_gone(self, what: str, count: int) -> bool:
        if self.channel.connection is not None and self.channel.connection.client is not None:
            return False
        logger.warning(
            "could not %s %d message(s) on a lost broker connection; Redis keeps them "
            "unacknowledged and redelivers them after the visibility timeout",
            what,
            count,
        )
        return True

    def restore_unacked_once(self, stderr: Any = None) -> None:
        """kombu's restore when the channel closes (a reconnect, a shutdown), running jobs held."""
        self._hold_running()
        super().restore_unacked_once(stderr)  # type: ignore[no-untyped-call]

    def _hold_running(self) -> None:
        if self._spare is None or self._delivered.restored:  # type: ignore[attr-defined]
            return
        self._flush()  # type: ignore[no-untyped-call]
        running = running_tags()
        held = [tag for tag in self._delivered if tag in running]
        for tag in held:
            del self._delivered[tag]
            self._held.add(tag)
        if held:
            logger.warning(
                "holding %d running job message(s) unacknowledged across the broker "
                "reconnect: each is acknowledged when its run ends, not run again meanwhile",
                len(held),
            )

    def restore_unacked(self, client: Any = None) -> None:
        if not self._connection_gone("requeue", len(self._delivered)):
            super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if delivery_tag in self._held:
            self._settle_held(delivery_tag, requeue=False)
            return
        if self._connection_gone("acknowledge", 1):
            # Forget it locally; the broker-side copy is redelivered later and skipped.
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if delivery_tag in self._held:
            self._settle_held(delivery_tag, requeue=requeue)
            return
        if self._connection_gone("reject", 1):
            virtual.QoS.reject(self, delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]

    def _settle_held(self, tag: Any, *, requeue: bool) -> None:
        """Ack (or requeue) a held message from a thread: Redis may still be coming back."""
        self._held.discard(tag)
        assert self._spare is not None  # nothing is held without it
        threading.Thread(
            target=settle,
            args=(self._spare, tag),
            kwargs={"requeue": requeue, "within": get_settings().redis_outage_tolerance},
            name="jobql-held-ack",
            daemon=True,
        ).start()


def settle(spare: dict[str, Any], tag: Any, *, requeue: bool, within: float) -> bool:
    """Ack (or requeue) one message on a connection of its own, trying for ``within`` seconds.

    Redis acks are removals from the shared unacked hash and index, valid from any channel;
    a requeue is kombu's own ``restore_by_tag``, as the visibility timeout's restore does.
    """
    what = "requeue" if requeue else "acknowledge"
    deadline = time.monotonic() + within
    pause = 0.1
    while True:
        try:
            with Connection(**spare) as connection:  # type: ignore[no-untyped-call]
                connection.connect()
                channel = connection.channel()
                try:
                    if requeue:
                        channel.qos.restore_by_tag(tag, leftmost=True)
                    else:
                        channel.qos._remove_from_indices(tag).execute()
                finally:
                    channel.close()
            return True
        except Exception as exc:
            if time.monotonic() + pause > deadline:
                logger.warning(
                    "could not %s a held message (%s); Redis keeps it unacknowledged and "
                    "redelivers it after the visibility timeout",
                    what,
                    exc,
                )
                return False
            logger.info("could not %s a held message yet, trying again: %s", what, exc)
            time.sleep(pause)
            pause = min(1.0, pause * 2)


class Channel(kombu_redis.Channel):
    QoS = QoS

    # Monotonic time before which no BRPOP is sent: Redis refused the last one.
    _refused_until = 0.0
    _refusing = False

    def _brpop_start(self, timeout: Any = None) -> None:
        if time.monotonic() >= self._refused_until:
            super()._brpop_start(timeout)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> bool:
        """kombu 5.7.0's ``_brpop_read``, with the envelope decoded under a guard, and a
        Redis that refuses writes (BRPOP is one) waited out rather than let end the worker."""
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except redis.ResponseError as exc:
                if (refusal := write_refusal(exc)) is None:
                    raise
                self._refused(refusal)
                raise Empty() from None
            if self._refusing:
                self._refusing = False
                logger.warning("the broker hands out messages again")
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            dest = (dest.decode() if isinstance(dest, bytes) else dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            message, reason = envelope(item)
            if message is None:
                self.set_aside(dest, item, reason)
            else:
                self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _refused(self, refusal: str) -> None:
        """Stock kombu lets this end the worker ("Unrecoverable error"); asked again at
        once, Redis would refuse as fast as it is asked. So the next BRPOP waits
        ``REFUSED_PAUSE``, while the worker's loop goes on with everything else."""
        self._refused_until = time.monotonic() + REFUSED_PAUSE
        if not self._refusing:
            self._refusing = True
            logger.warning(
                "the broker refuses to hand out messages (%s); asking again every %g s",
                refusal,
                REFUSED_PAUSE,
            )

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        """kombu 5.7.0's ``_get`` (polling consumers), with the same guard."""
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))  # type: ignore[no-untyped-call]
                if item:
                    self._maybe_update_queues_expire(client, queue)  # type: ignore[no-untyped-call]
                    message, reason = envelope(item)
                    if message is not None:
                        return message
                    self.set_aside(queue, item, reason)
            self._maybe_update_queues_expire(client, queue)  # type: ignore[no-untyped-call]
            raise Empty()

    def set_aside(self, queue: str, raw: bytes | str, reason: str) -> None:
        """Keep an unreadable envelope on the dead-letter list instead of dying on it."""
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")
        logger.error(
            "set aside a malformed message of %d bytes from queue %s on %s: %s",
            len(data),
            queue,
            DEAD_LETTER_KEY,
            reason,
        )
        known = _named(data)
        entry = dead_letter_entry(queue, data, reason, **known)
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().lpush(DEAD_LETTER_KEY, entry).ltrim(
                    DEAD_LETTER_KEY, 0, DEAD_LETTERS_KEPT - 1
                ).execute()
        except self.connection_errors:
            logger.warning("the malformed message could not be kept: the broker is gone")
        if "id" in known:  # its job, if recorded and waiting, fails with the reason
            try:
                events.refused(known["id"], "InvalidMessage", f"unreadable envelope: {reason}")
            except redis.RedisError as exc:
                logger.warning("job %s of the malformed message not ended: %s", known["id"], exc)


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """The same fixes on kombu's Sentinel channel: a failover is a restart seen from here
    (the worker's connection to the old primary dies while late-acked tasks run)."""

    QoS = QoS


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


TRANSPORT = f"{__name__}:Transport"
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"
