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
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

logger = logging.getLogger(__name__)


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


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT = f"{__name__}:Transport"
