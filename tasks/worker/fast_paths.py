"""The fix of kombu's Redis transport (``kombu.redis_transport``, :mod:`tasks.worker.broker`) and
the start-up checks that keep it honest, building what they rely on from the installed libraries
without I/O. A fix, so ``JOBQL_FAST_PATHS=false`` leaves it on; only a failed check turns it off
(Celery then uses kombu's stock transport). The worker's other register entries live beside their
code (:mod:`tasks.worker.results`, :mod:`tasks.worker.poison`, :mod:`tasks.worker.beat`,
:mod:`tasks.core.message_writer`).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from billiard.pool import ApplyResult  # type: ignore[import-untyped]
from celery.concurrency.asynpool import AsynPool
from celery.worker import state as worker_state
from celery.worker.request import Request
from kombu.connection import Connection
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis

from tasks.core import compat
from tasks.core.message_writer import VERIFIED, offline_channel, require
from tasks.core.settings import Settings
from tasks.worker import broker

REDIS_TRANSPORT = compat.fix(
    "kombu.redis_transport",
    "kombu",
    VERIFIED,
    "kombu's stock Redis transport (a Redis restart may stop a worker, and after a broker "
    "reconnect a running job's message is delivered again: its second delivery waits on "
    "the run lease, tasks.core.run_lease)",
    upstream="a worker that loses Redis mid-job exits or stops consuming "
    "(celery/celery#10205, celery/celery#1307); after a reconnect kombu restores the "
    "message of a job still running, which then runs twice (as celery/celery#4671 on AMQP)",
)


def broker_transport(settings: Settings) -> str | None:
    """The Celery ``broker_transport``: ours on a Redis broker while its check passes (it is a
    fix, so ``JOBQL_FAST_PATHS`` does not turn it off), else Celery's pick."""
    scheme = urlparse(settings.broker).scheme
    if scheme not in ("redis", "rediss", "sentinel"):
        return None
    on = compat.decide(REDIS_TRANSPORT, check_redis_transport, settings)
    if not on:
        return None
    if scheme == "sentinel":
        # kombu re-reads the transport from the URL's scheme whenever it moves to the next
        # sentinel of the list (``Connection.switch``), which a failover makes it do: the
        # scheme must name ours too, or the second failover would meet the stock transport.
        TRANSPORT_ALIASES["sentinel"] = broker.SENTINEL_TRANSPORT
        return broker.SENTINEL_TRANSPORT
    return broker.TRANSPORT


def _parameters(method: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(method).parameters)


class _NoRestore:
    """A channel stand-in for a QoS built only to look at: nothing to restore at exit."""

    do_restore = False


def check_redis_transport() -> None:
    """What ``tasks.worker.broker`` overrides, calls and reads still exists with the same shape."""
    require(
        issubclass(kombu_redis.SentinelChannel, kombu_redis.Channel)
        and issubclass(kombu_redis.SentinelTransport, kombu_redis.Transport),
        "kombu's Sentinel channel and transport extend the Redis ones",
    )
    overridden = {
        "restore_unacked": ["self", "client"],
        "ack": ["self", "delivery_tag"],
        "reject": ["self", "delivery_tag", "requeue"],
    }
    for name, parameters in overridden.items():
        require(
            _parameters(getattr(kombu_redis.QoS, name)) == parameters,
            f"kombu's redis QoS.{name} takes {parameters[1:]}",
        )
    # tasks.worker.reaper restores a lost worker's messages the way the visibility timeout does.
    require(
        _parameters(kombu_redis.QoS.restore_by_tag) == ["self", "tag", "client", "leftmost"],
        "kombu's redis QoS.restore_by_tag(tag, client, leftmost)",
    )
    require(kombu_redis.Channel.unacked_key == "unacked", "kombu's redis Channel.unacked_key")
    for name in ("ack", "reject"):
        require(
            _parameters(getattr(virtual.QoS, name)) == overridden[name],
            f"kombu's virtual QoS.{name} takes {overridden[name][1:]}",
        )
    require(kombu_redis.Channel.QoS is kombu_redis.QoS, "kombu's redis Channel.QoS is its QoS")
    require(
        kombu_redis.Transport.Channel is kombu_redis.Channel,
        "kombu's redis Transport.Channel is its Channel",
    )
    # A refused BRPOP (MISCONF, OOM) holds the next one back by skipping _brpop_start.
    require(
        _parameters(kombu_redis.Channel._brpop_start) == ["self", "timeout"],
        "kombu's redis Channel._brpop_start(timeout)",
    )
    # The envelope guard replaces two of kombu's methods with copies: they must still be
    # the code that was copied (same steps, same helpers), or the copy would drift.
    require(
        _parameters(kombu_redis.Channel._brpop_read) == ["self", "options"]
        and _parameters(kombu_redis.Channel._get) == ["self", "queue"],
        "kombu's redis Channel._brpop_read(**options) and _get(queue)",
    )
    for method, steps in {
        "_brpop_read": (
            "parse_response(self.client.connection", "self._queue_cycle.rotate(dest)",
            "self.connection._deliver(loads(bytes_to_str(item)), dest)", "self._in_poll = None",
            "self._flush_brpop_reauth()",
        ),
        "_get": (
            "client.rpop(self._q_for_pri(queue, pri))", "return loads(bytes_to_str(item))",
            "self._maybe_update_queues_expire(client, queue)",
        ),
    }.items():  # fmt: skip
        source = inspect.getsource(getattr(kombu_redis.Channel, method))
        missing = [step for step in steps if step not in source]
        require(not missing, f"kombu's redis Channel.{method} still does {missing}")
    qos = kombu_redis.QoS(_NoRestore())  # type: ignore[no-untyped-call]
    require(isinstance(getattr(qos, "_delivered", None), dict), "QoS.__init__ sets _delivered")
    check_held_messages()
    with offline_channel({}, broker.Transport) as channel:
        require(channel.QoS is broker.QoS, "the channel builds our QoS")
        require(
            hasattr(channel.connection.client, "hostname"),
            "a channel reaches its client through channel.connection.client",
        )
        spare = Connection(**broker.settings_of(channel.connection.client))  # type: ignore[no-untyped-call]
        require(
            spare.transport_cls is broker.Transport,
            "a connection opened from the channel's settings uses our transport",
        )


def check_held_messages() -> None:
    """What ``tasks.worker.broker`` reads to hold a running job's message across a reconnect."""
    restore_once = inspect.getsource(virtual.QoS.restore_unacked_once)
    require(
        _parameters(virtual.QoS.restore_unacked_once) == ["self", "stderr"]
        and "self._flush()" in restore_once
        and "self.restore_unacked()" in restore_once
        and "state.restored = True" in restore_once,
        "kombu's QoS.restore_unacked_once flushes, then restores what _delivered holds",
    )
    require(
        _parameters(kombu_redis.QoS._remove_from_indices) == ["self", "delivery_tag", "pipe"],
        "kombu's redis QoS._remove_from_indices(delivery_tag, pipe)",
    )
    for name in ("active_requests", "reserved_requests"):
        require(
            isinstance(getattr(worker_state, name, None), weakref.WeakSet),
            f"celery.worker.state.{name} is a WeakSet of requests",
        )
    require(
        isinstance(getattr(Request, "message", None), property)
        and getattr(Request, "acknowledged", None) is False
        and hasattr(Request, "_apply_result"),
        "Celery's Request has message, acknowledged and _apply_result",
    )
    require(
        hasattr(ApplyResult, "_write_to")
        and "job._write_to = proc" in inspect.getsource(AsynPool._create_write_handlers),
        "prefork marks a job it begins writing to a child with _write_to",
    )
    require(
        "job.discard()" in inspect.getsource(AsynPool.flush)
        and "if not job._accepted" in inspect.getsource(AsynPool.flush),
        "Celery's pool flush on reconnect drops only jobs no child accepted",
    )
