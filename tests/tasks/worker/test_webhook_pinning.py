"""A webhook goes to the address its guard passed: no second lookup of the name, so a DNS
server that answers an allowed address to the check and an internal one a moment later
(DNS rebinding) gets nothing to the internal one.

The resolver is the one stand-in: ``socket.getaddrinfo`` itself, replaced for the test's name
in this whole process, so a second lookup anywhere (the HTTP client's own included) would get
the second answer. The receivers are real HTTP(S) servers on two loopback addresses, the same
port: 127.0.0.1 is allowed (``JOBQL_WEBHOOK_ALLOWED_NETWORKS``), 127.0.0.2 is internal and
must never see a request. The delivery log is written to a real Valkey.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import Retry

from devtools.valkey import EmbeddedValkey
from tasks.core import redis_clients
from tasks.core.settings import get_settings
from tasks.core.webhooks import deliveries_key, signature
from tasks.worker import webhooks
from tests.support.redis_servers import make_certificates

NAME = "hooks.test"
ALLOWED, INTERNAL = "127.0.0.1", "127.0.0.2"
SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
_getaddrinfo = socket.getaddrinfo


class Rebinding:
    """A DNS server with a zero TTL: ``NAME`` is ``first`` once, then ``then`` on every later
    lookup. Every other name resolves as usual."""

    def __init__(self, first: str, then: str, names: tuple[str, ...] = (NAME,)) -> None:
        self.first, self.then, self.names = first, then, names
        self.lookups = 0

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in self.names:
            return _getaddrinfo(host, port, *args, **kwargs)
        self.lookups += 1
        address = self.first if self.lookups == 1 else self.then
        sockaddr = (address, int(port or 0))
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]


class Receiver:
    """A real HTTP(S) server on one address; records each request and the TLS names asked."""

    def __init__(self, address: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server_names: list[str | None] = []
        self.answer: tuple[int, dict[str, str]] = (200, {})
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append((self.path, headers, body))
                status, extra = receiver.answer
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = int(self.server.server_address[1])
        # Polls briskly: shutdown() waits for the next poll.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pair(tls: ssl.SSLContext | None = None) -> tuple[Receiver, Receiver]:
    """The allowed and the internal receiver, on one port (a URL has one)."""
    for _ in range(5):
        internal = Receiver(INTERNAL, 0, tls)
        try:
            return Receiver(ALLOWED, internal.port, tls), internal
        except OSError:  # that port is taken on 127.0.0.1: another pair
            internal.close()
    raise RuntimeError("no port free on both loopback addresses")


@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), persist=False).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def worker(valkey: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a worker is: a webhook secret, only 127.0.0.1 allowed of loopback."""
    monkeypatch.setenv("JOBQL_REDIS_URL", valkey)
    monkeypatch.setenv("JOBQL_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("JOBQL_WEBHOOK_ALLOWED_NETWORKS", f'["{ALLOWED}/32"]')
    monkeypatch.setattr(redis_clients, "_worker_client", None)
    monkeypatch.setattr(redis_clients, "_records_client", None)
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()


@pytest.fixture
def plain(worker: None) -> Iterator[tuple[Receiver, Receiver]]:
    allowed, internal = _pair()
    yield allowed, internal
    allowed.close()
    internal.close()


@pytest.fixture
def tls(worker: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """HTTPS receivers whose certificate names ``NAME`` alone (no IP address), and the worker
    trusting their CA as it trusts the system's."""
    certs = make_certificates(tmp_path / "certs", names=(NAME,))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certs.server_cert, certs.server_key)
    monkeypatch.setattr(webhooks, "_tls", webhooks.tls_context(cafile=str(certs.ca)))
    allowed, internal = _pair(server)
    yield allowed, internal
    allowed.close()
    internal.close()


def _deliver(url: str) -> tuple[int | None, dict[str, Any]]:
    """One delivery as the worker runs it: the task's own code, its log in Valkey."""
    job_id = f"job-{os.urandom(4).hex()}"
    record = {"id": job_id, "webhook_url": url, "state": "SUCCESS"}
    status = webhooks.deliver_webhook.run("job", record, "msg_pinning", 0.0, body='{"id": 1}')
    log = redis_clients.records_client().lrange(deliveries_key("job", job_id), 0, -1)
    assert len(log) == 1
    return status, json.loads(log[0])


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_rebinding_name_gets_the_address_its_guard_passed(
    scheme: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, internal = request.getfixturevalue("plain" if scheme == "http" else "tls")
    dns = Rebinding(first=ALLOWED, then=INTERNAL)
    monkeypatch.setattr(socket, "getaddrinfo", dns)

    status, entry = _deliver(f"{scheme}://{NAME}:{allowed.port}/hook?to=ops")

    assert (status, entry["status"], entry["error"]) == (200, 200, None)
    assert internal.requests == [] and internal.server_names == []
    assert dns.lookups == 1, "the name was looked up once: by the guard, for the connection"
    [(path, headers, body)] = allowed.requests
    assert path == "/hook?to=ops" and body == b'{"id": 1}'
    assert headers["host"] == f"{NAME}:{allowed.port}", "the Host header carries the name"
    signed = signature(SECRET, "msg_pinning", int(headers["webhook-timestamp"]), body)
    assert headers["webhook-signature"] == signed
    if scheme == "https":
        assert allowed.server_names == [NAME], "SNI names the host, not the pinned address"


def test_a_name_whose_first_answer_is_internal_is_refused_with_nothing_sent(
    plain: tuple[Receiver, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, internal = plain
    dns = Rebinding(first=INTERNAL, then=ALLOWED)
    monkeypatch.setattr(socket, "getaddrinfo", dns)

    status, entry = _deliver(f"http://{NAME}:{allowed.port}/hook")

    assert status is None and entry["status"] is None
    assert entry["error"] == f"refused: {NAME} resolves to {INTERNAL}, a private address"
    assert allowed.requests == internal.requests == []


def test_the_certificate_is_checked_against_the_name_not_the_address(
    tls: tuple[Receiver, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver's certificate is for ``NAME``: another name pinned to the same address
    fails the handshake, whatever address it connected to."""
    allowed, internal = tls
    monkeypatch.setattr(socket, "getaddrinfo", Rebinding(ALLOWED, INTERNAL, ("other.test",)))

    destination = webhooks.pin(f"https://other.test:{allowed.port}/hook")
    assert isinstance(destination, webhooks.Destination)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch.*'other\.test'"):
        webhooks.post(destination, "msg_pinning", b"{}")

    assert allowed.server_names == ["other.test"]
    assert allowed.requests == internal.requests == []


def test_a_redirect_to_an_internal_address_is_an_answer_not_followed(
    plain: tuple[Receiver, Receiver], monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed, internal = plain
    monkeypatch.setattr(socket, "getaddrinfo", Rebinding(ALLOWED, INTERNAL))
    allowed.answer = (307, {"location": f"http://{INTERNAL}:{internal.port}/hook"})

    destination = webhooks.pin(f"http://{NAME}:{allowed.port}/hook")
    assert isinstance(destination, webhooks.Destination)
    assert webhooks.post(destination, "msg_pinning", b"{}") == 307

    assert len(allowed.requests) == 1 and internal.requests == []


def test_an_answer_that_is_not_http_is_logged_and_retried(worker: None) -> None:
    """A receiver that answers garbage is a failed attempt like a timeout: logged, retried."""
    listener = socket.create_server((ALLOWED, 0))
    port = listener.getsockname()[1]

    def answer() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"not HTTP at all\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    job_id = f"job-{os.urandom(4).hex()}"
    record = {"id": job_id, "webhook_url": f"http://{ALLOWED}:{port}/", "state": "SUCCESS"}
    try:
        with pytest.raises(Retry):
            webhooks.deliver_webhook.run("job", record, "msg_garbled", time.time(), body="{}")
    finally:
        thread.join(5)
        listener.close()

    [entry] = redis_clients.records_client().lrange(deliveries_key("job", job_id), 0, -1)
    assert json.loads(entry)["error"].startswith("BadStatusLine:")
