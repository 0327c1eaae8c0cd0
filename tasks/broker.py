"""kombu's Redis transport, made to survive a Redis restart while late-acked tasks run.

Measured with Celery 5.7.0 and kombu 5.7.0: when Redis restarts while a worker holds an
unacknowledged message (``task_acks_late``), the worker's consumer closes its channel,
the channel disconnects its pools first and then tries to restore the unacked messages
through a new pool built from a connection that is already released
(``AttributeError: 'NoneType' object has no attribute 'hostname'`` in ``_connparams``).
The error escapes the consumer and the whole worker process exits. After a reconnect, a
task that finishes acks through its old, closed channel and fails the same way.

Skipping those calls on a dead channel is safe: the messages stay in Redis's unacked
index, and kombu restores them after ``visibility_timeout``; a message of a job that
finished meanwhile is then skipped by ``JobTask.before_start``. The worker itself
reconnects and goes on. ``tasks.fast_paths`` checks kombu's shape before it is used.

A second fix: kombu decodes each envelope it pops (``_brpop_read``) with no guard, so one
message that is not a JSON object of the expected shape raised out of the consumer and
ended the worker. Here such a message is set aside on ``DEAD_LETTER_KEY`` (with its queue,
reason and raw text) and logged with its size; the worker goes on with the next one.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from tasks.records import PREFIX

logger = logging.getLogger(__name__)

# Envelopes the worker could not read, newest first, as JSON: queue, reason, size, raw text.
DEAD_LETTER_KEY = f"{PREFIX}:dead-letter"
DEAD_LETTERS_KEPT = 1000
_RAW_KEPT = 64 * 1024  # bytes of each raw envelope kept for inspection


def envelope(raw: bytes | str) -> tuple[dict[str, Any] | None, str]:
    """The decoded envelope, or None and why kombu could not deliver it."""
    try:
        message = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(message, dict):
        return None, "not a JSON object"
    properties = message.get("properties")
    if not isinstance(properties, dict) or "delivery_tag" not in properties:
        return None, "no properties with a delivery_tag"
    delivery = properties.get("delivery_info")
    if not isinstance(delivery, dict) or not all(
        isinstance(delivery.get(k), str) for k in ("exchange", "routing_key")
    ):
        return None, "no delivery_info with exchange and routing_key"
    headers = message.get("headers")
    if headers is not None and not isinstance(headers, dict):
        return None, "headers are not an object"
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        return None, "body is not a string"
    if body and properties.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return None, "body is not base64"
    return message, ""


class QoS(kombu_redis.QoS):
    """Acks and requeues of a channel whose connection is gone are left to Redis."""

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

    def restore_unacked(self, client: Any = None) -> None:
        if not self._connection_gone("requeue", len(self._delivered)):
            super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if self._connection_gone("acknowledge", 1):
            # Forget it locally; the broker-side copy is redelivered later and skipped.
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._connection_gone("reject", 1):
            virtual.QoS.reject(self, delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue=requeue)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS

    def _brpop_read(self, **options: Any) -> bool:
        """kombu 5.7.0's ``_brpop_read``, with the envelope decoded under a guard."""
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
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
        entry = json.dumps(
            {
                "queue": queue,
                "reason": reason,
                "size": len(data),
                "at": time.time(),
                "raw": data[:_RAW_KEPT].decode("utf-8", "replace"),
            }
        )
        try:
            with self.conn_or_acquire() as client:
                client.pipeline().lpush(DEAD_LETTER_KEY, entry).ltrim(
                    DEAD_LETTER_KEY, 0, DEAD_LETTERS_KEPT - 1
                ).execute()
        except self.connection_errors:
            logger.warning("the malformed message could not be kept: the broker is gone")


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
