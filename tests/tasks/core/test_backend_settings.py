"""The broker and result-backend settings turn into the Celery configuration they promise."""

from __future__ import annotations

import json

import pytest
from celery.backends.base import COMPRESSED_PAYLOAD_MAGIC
from celery.backends.redis import RedisBackend as StockRedisBackend
from pydantic import ValidationError

from tasks.core import rabbitmq
from tasks.core.app import celery_config, create_celery_app
from tasks.core.records import ResultTooLarge, checked_json
from tasks.core.settings import Settings

REDIS = "redis://127.0.0.1:6399/0"
AMQP = "amqp://127.0.0.1:5672//"


def _settings(**values: object) -> Settings:
    return Settings(redis_url=REDIS, **values)  # type: ignore[arg-type]


def test_rabbitmq_serves_jobql_priority_zero_first() -> None:
    assert [rabbitmq.priority(AMQP, p) for p in (None, 0, 4, 9)] == [9, 9, 5, 0]
    assert [rabbitmq.priority(REDIS, p) for p in (None, 0, 9)] == [None, 0, 9]


def test_rabbitmq_queues_carry_priorities_or_quorum_and_the_consumer_timeout() -> None:
    classic = celery_config(
        _settings(broker_url=AMQP, task_time_limit=7200, task_soft_time_limit=7000)
    )
    queue = classic["task_queues"][0]
    assert queue.queue_arguments == {"x-consumer-timeout": 14_400_000, "x-max-priority": 9}
    assert classic["broker_transport_options"] == {"confirm_publish": True}
    assert classic["task_default_priority"] == 9

    quorum = celery_config(_settings(broker_url=AMQP, rabbitmq_queue_type="quorum"))
    queue = quorum["task_queues"][0]
    assert queue.queue_arguments == {"x-consumer-timeout": 3_600_000, "x-queue-type": "quorum"}
    assert queue.exchange.type == "topic", "Celery's native delayed delivery binds topic only"


def test_redis_keeps_its_own_transport_options() -> None:
    config = celery_config(_settings())
    assert "confirm_publish" not in config["broker_transport_options"]
    assert config["task_queues"][0].queue_arguments is None


@pytest.mark.parametrize(
    ("version", "queue_type", "warned"),
    [
        ("3.10.8", "classic", ["consumer_timeout"]),
        ("3.11.15", "classic", []),
        ("3.12.1", "quorum", ["quorum"]),
        ("4.1.0", "quorum", []),
    ],
)
def test_the_worker_warns_about_what_the_rabbitmq_server_ignores(
    version: str, queue_type: str, warned: list[str]
) -> None:
    settings = _settings(broker_url=AMQP, rabbitmq_queue_type=queue_type)
    found = rabbitmq.server_warnings(settings, {"version": version.encode()})
    assert len(found) == len(warned)
    for warning, word in zip(found, warned, strict=True):
        assert word in warning and version in warning


def test_msgpack_is_a_setting_and_json_is_always_accepted() -> None:
    config = celery_config(_settings(serializer="msgpack"))
    assert config["task_serializer"] == config["result_serializer"] == "msgpack"
    assert config["accept_content"] == ["json", "msgpack"]
    assert celery_config(_settings())["accept_content"] == ["json"]
    with pytest.raises(ValidationError):
        _settings(serializer="pickle")


def test_compression_applies_above_the_threshold_in_celery_s_own_format() -> None:
    settings = _settings(compression="zstd", compression_threshold_bytes=100)
    app = create_celery_app(settings)
    stock = StockRedisBackend(app=app, url=REDIS)
    try:
        small, large = {"r": "x"}, {"r": "x" * 1000}
        assert json.loads(app.backend.encode(small)) == small, "plain JSON below it"
        packed = app.backend.encode(large)
        assert packed.startswith(COMPRESSED_PAYLOAD_MAGIC + b"application/zstd")
        assert len(packed) < 100
        assert stock.decode(packed) == large
    finally:
        app.close()


def test_a_result_over_the_limit_is_refused_with_its_size() -> None:
    assert checked_json({"a": 1}, 1024) == '{"a":1}'
    with pytest.raises(ResultTooLarge, match=r"2008 bytes.*1024"):
        checked_json({"a": "x" * 2000}, 1024)


def test_a_database_result_backend_is_jobql_s_subclass() -> None:
    url = "db+postgresql+psycopg://jobql@127.0.0.1:5432/jobql"
    settings = _settings(result_backend_url=url)
    config = celery_config(settings)
    assert config["result_backend"] == "tasks.core.database_backend:DatabaseBackend+" + url[3:]
    assert config["result_expires"] == settings.job_retention_seconds, "records agree"
    sender = celery_config(settings, producer=True, canvas=True)
    assert sender["result_backend"] == config["result_backend"], "a chord's sender needs it"
