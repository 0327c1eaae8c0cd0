"""The worker-side fast paths (kombu transport fix, Celery message writer): checked, switchable."""

from __future__ import annotations

import logging

import pytest
from celery.worker import state as worker_state

from tasks.core import compat
from tasks.core.app import celery_config, create_celery_app
from tasks.core.message_writer import MESSAGE_WRITER, check_message_writer, writes_messages
from tasks.core.settings import Settings
from tasks.worker import broker, poison
from tasks.worker.app import worker_config
from tasks.worker.fast_paths import REDIS_TRANSPORT, broker_transport, check_redis_transport

REDIS = "redis://127.0.0.1:6390/0"


def _settings(**overrides: object) -> Settings:
    """Settings of this test alone, whatever ``JOBQL_FAST_PATHS`` the suite runs under."""
    return Settings(**{"redis_url": REDIS, "env": "test", "fast_paths": True, **overrides})  # type: ignore[arg-type]


def test_the_installed_celery_and_kombu_have_the_verified_shape() -> None:
    app = create_celery_app(_settings(), producer=True)

    check_redis_transport()
    check_message_writer(app)


def test_both_are_on_and_reported_with_their_versions() -> None:
    settings = _settings()
    app = create_celery_app(settings, producer=True)

    assert worker_config(settings)["broker_transport"] == broker.TRANSPORT
    assert writes_messages(app, settings) is True
    report = compat.report()
    for path in (REDIS_TRANSPORT, MESSAGE_WRITER):
        assert report[path.name]["active"] is True
        assert report[path.name]["verified"] == "celery 5.7.0, kombu 5.7.0"


def test_the_switch_leaves_the_writer_and_the_transport_fix_on() -> None:
    """The message writer is the enqueue design and the transport a fix of a kombu bug:
    ``JOBQL_FAST_PATHS=false`` (the stock speed) keeps both."""
    settings = _settings(fast_paths=False)
    app = create_celery_app(settings, producer=True)

    assert writes_messages(app, settings) is True
    # Stock kombu lets a worker die on a Redis restart: the fix stays on.
    assert worker_config(settings)["broker_transport"] == broker.TRANSPORT
    report = compat.report()
    assert (report[MESSAGE_WRITER.name]["active"], report[MESSAGE_WRITER.name]["kind"]) == (
        True,
        "design",
    )
    assert (report[REDIS_TRANSPORT.name]["active"], report[REDIS_TRANSPORT.name]["kind"]) == (
        True,
        "fix",
    )


def test_neither_applies_to_a_rabbitmq_broker() -> None:
    settings = _settings(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    app = create_celery_app(settings, producer=True)

    assert broker_transport(settings) is None
    assert writes_messages(app, settings) is False


def test_a_transport_that_queues_priorities_elsewhere_turns_the_writer_off_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A deployment whose kombu names priority queues differently must not get our messages."""
    settings = _settings()
    app = create_celery_app(settings, producer=True)
    app.conf.broker_transport_options = {
        **celery_config(settings)["broker_transport_options"],
        "sep": "\x06\x16",
    }

    with caplog.at_level(logging.WARNING, logger="tasks.core.compat"):
        first = writes_messages(app, settings)
        second = writes_messages(app, settings)

    assert first is second is False
    assert "sep" in str(compat.report()[MESSAGE_WRITER.name]["reason"])
    warnings = [r for r in caplog.records if MESSAGE_WRITER.name in r.getMessage()]
    assert len(warnings) == 1
    assert "Celery's producer" in warnings[0].getMessage()
    assert writes_messages(create_celery_app(settings, producer=True), settings) is True


def test_the_transport_fix_turns_off_loudly_when_celery_no_longer_tracks_running_requests(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Holding a running job's message across a reconnect reads Celery's worker state: if that
    changed shape, the whole fix says so at start-up rather than quietly let a job run twice."""
    monkeypatch.setattr(worker_state, "active_requests", set())

    with caplog.at_level(logging.WARNING, logger="tasks.core.compat"):
        assert broker_transport(_settings()) is None

    reason = str(compat.report()[REDIS_TRANSPORT.name]["reason"])
    assert "celery.worker.state.active_requests" in reason
    assert any(REDIS_TRANSPORT.name in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    assert broker_transport(_settings()) == broker.TRANSPORT


def test_the_poison_message_consumer_is_a_fix_that_stays_on_without_fast_paths() -> None:
    """tasks.worker.poison overrides Celery's consumer handlers: their shape is checked, and
    ``JOBQL_FAST_PATHS=false`` keeps it (stock Celery dies on a message of the wrong shape)."""
    poison.check_consumer()
    for fast_paths in (True, False):
        config = worker_config(_settings(fast_paths=fast_paths))
        assert config["worker_consumer"] == poison.CONSUMER
    # The API's apps, declared or producer, never name it: the worker adds it as it starts.
    assert "worker_consumer" not in celery_config(_settings())
    assert "worker_consumer" not in celery_config(_settings(), producer=True)
    assert compat.report()[poison.POISON_MESSAGES.name]["kind"] == "fix"


def test_a_starting_worker_takes_its_parts_and_logs_its_internals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What ``celeryd_init`` does in a worker: its consumer, transport and bootsteps, and
    one line naming each library internal it decided (the API's /health/stats lists only
    the API's)."""
    from tasks.worker.app import attach
    from tasks.worker.heartbeat import Heartbeat

    settings = _settings()
    app = create_celery_app(settings)
    with caplog.at_level(logging.INFO, logger="tasks.worker.app"):
        attach(app, settings)
    assert app.conf.worker_consumer == poison.CONSUMER
    assert app.conf.broker_transport == broker.TRANSPORT
    assert Heartbeat in app.steps["worker"]
    line = next(r.getMessage() for r in caplog.records if r.name == "tasks.worker.app")
    assert "kombu.redis_transport on" in line and "celery.poison_messages on" in line
