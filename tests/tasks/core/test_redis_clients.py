"""One place turns the Redis settings into clients and Celery options: what it derives.

In-process, no server: the end-to-end proofs are ``test_redis_tls`` and ``test_redis_sentinel``.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import redis
from pydantic import ValidationError

from devtools.processes import free_port
from gql.ops.checks import _safe
from tasks.core import redis_clients
from tasks.core.app import celery_config
from tasks.core.settings import Settings
from tasks.worker import broker
from tasks.worker.app import worker_config

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2"


def test_rediss_urls_give_celery_the_same_tls_files_as_redis_py(tmp_path: Path) -> None:
    settings = Settings(
        redis_url="rediss://:pw@redis.internal:6380/0",
        redis_tls_ca_certs=tmp_path / "ca.pem",
        redis_tls_certfile=tmp_path / "client.pem",
        redis_tls_keyfile=tmp_path / "client-key.pem",
    )
    config = celery_config(settings)
    expected = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(tmp_path / "ca.pem"),
        "ssl_certfile": str(tmp_path / "client.pem"),
        "ssl_keyfile": str(tmp_path / "client-key.pem"),
    }
    assert config["broker_use_ssl"] == expected
    assert config["redis_backend_use_ssl"] == expected
    assert redis_clients.tls_options(settings) == {**expected, "ssl_check_hostname": True}


def test_a_plain_redis_url_gets_no_tls_options() -> None:
    config = celery_config(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert "broker_use_ssl" not in config and "redis_backend_use_ssl" not in config


def test_sentinel_urls_name_the_master_for_celery_and_use_the_fixed_transport() -> None:
    settings = Settings(redis_url=SENTINELS, redis_sentinel_master="jobs")
    config = celery_config(settings)

    assert config["broker_transport_options"]["master_name"] == "jobs"
    assert config["result_backend_transport_options"]["master_name"] == "jobs"
    assert worker_config(settings)["broker_transport"] == broker.SENTINEL_TRANSPORT
    hosts, master = redis_clients.sentinel_hosts(SENTINELS)
    assert hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]
    assert master == {"password": "s3cret", "db": 2}


def test_a_sentinel_url_without_the_master_name_is_refused_at_start_up() -> None:
    with pytest.raises(ValidationError, match="JOBQL_REDIS_SENTINEL_MASTER"):
        Settings(redis_url=SENTINELS)


def test_production_refuses_an_unverified_tls_certificate() -> None:
    with pytest.raises(ValidationError, match="JOBQL_REDIS_TLS_CERT_REQS"):
        Settings(
            env="production", redis_url="rediss://redis.internal:6380/0",
            redis_tls_cert_reqs="none", auth_mode="api_key", api_keys={"a" * 64: "svc"},
        )  # fmt: skip


def test_messages_show_sentinel_urls_without_the_password() -> None:
    assert _safe(SENTINELS) == "sentinel://10.0.0.1:26379/2;sentinel://10.0.0.2:26380/2"


def test_beat_reads_its_schedules_over_tls_and_through_sentinel_like_the_records(
    tmp_path: Path,
) -> None:
    """RedBeat makes its own client from Celery's config: it must get the records' shape."""
    from celery import Celery
    from redbeat.schedulers import get_redis

    from tasks.core.app import beat_config

    tls = Settings(redis_url="rediss://:pw@redis.internal:6380/0",
                   redis_tls_ca_certs=tmp_path / "ca.pem")  # fmt: skip
    app = Celery("beat-tls", set_as_current=False)
    app.conf.update(beat_config(tls))
    kwargs = get_redis(app).connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    assert kwargs["password"] == "pw" and kwargs["port"] == 6380

    sentinel = Settings(redis_url=SENTINELS, redis_sentinel_master="jobql-primary")
    app = Celery("beat-sentinel", set_as_current=False)
    app.conf.update(beat_config(sentinel))
    client = get_redis(app)  # lazy: no server is asked until a command is sent
    pool = client.connection_pool
    assert pool.service_name == "jobql-primary"
    asked = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(one["host"], one["port"]) for one in asked] == [
        ("10.0.0.1", 26379),
        ("10.0.0.2", 26380),
    ]
    assert pool.connection_kwargs["password"] == "s3cret" and pool.connection_kwargs["db"] == 2


def test_a_cluster_url_names_several_seed_nodes_the_first_giving_credentials() -> None:
    first, others = redis_clients.cluster_seeds(
        "redis://default:pw@node-1:7000; redis://node-2:7001;redis://node-3"
    )
    assert first == "redis://default:pw@node-1:7000"
    assert others == [("node-2", 7001), ("node-3", 6379)]
    assert redis_clients.cluster_seeds("redis://node-1:7000") == ("redis://node-1:7000", [])
    with pytest.raises(ValueError, match="one scheme"):
        redis_clients.cluster_seeds("rediss://node-1:7000;redis://node-2:7001")


def test_a_cluster_whose_seeds_are_all_down_raises_what_a_redis_that_is_down_raises() -> None:
    # redis-py raises RedisClusterUnreachableError, which is no RedisError (redis-py#2310):
    # every handler that answers "Redis is down" would let it escape.
    settings = Settings(connect_timeout=0.2)
    dead = ";".join(f"redis://127.0.0.1:{port}" for port in (free_port(), free_port()))
    with pytest.raises(redis.ConnectionError, match="no node of the Redis Cluster answers"):
        redis_clients.sync_cluster(dead, settings)


async def test_an_asyncio_cluster_whose_seeds_are_down_raises_a_connection_error() -> None:
    settings = Settings(connect_timeout=0.2)
    client = redis_clients.async_cluster(f"redis://127.0.0.1:{free_port()}", settings)
    try:
        with pytest.raises(redis.ConnectionError, match="Redis Cluster"):
            await client.get("jobql:probe")
    finally:
        await client.aclose()
