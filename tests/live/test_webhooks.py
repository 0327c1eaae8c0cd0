"""A receiver gets signed webhooks from the worker: verified, retried, and never internal."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tasks.core.webhooks import refused_address, signature
from tests.conftest import WEBHOOK_SECRET, AsyncGraphQL

DELIVERIES = """
query($id: ID!) { job(id: $id) { state webhookDeliveries { id event attempt status at error } } }
"""


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The Standard Webhooks check a receiver runs, written from the specification."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, given.partition(",")[2])
        for given in headers["webhook-signature"].split()
        if given.startswith("v1,")
    )


def test_signatures_match_the_specifications_example() -> None:
    # The Standard Webhooks specification's own published test vector: a public example,
    # not a credential of any service.
    body = b'{"test": 2432232314}'
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signed = signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signed == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_internal_addresses_are_refused_unless_allowed() -> None:
    for address in ("127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "::1", "0.0.0.0"):
        assert refused_address([address], []) == address
    assert refused_address(["::ffff:10.0.0.1"], []) == "10.0.0.1"
    assert refused_address(["93.184.215.14", "2606:2800::1"], []) is None
    assert refused_address(["127.0.0.1"], ["127.0.0.0/8"]) is None


class Receiver:
    """A local HTTP server that records every POST and answers from a script of statuses."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    async def wait_for(self, count: int, within: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while len(self.received) < count:
            assert asyncio.get_running_loop().time() < deadline, self.received
            await asyncio.sleep(0.05)


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    statuses = getattr(request, "param", [])
    server = Receiver(list(statuses))
    # A brisk poll: shutdown() waits for the next one (0.5 s by default, at every teardown).
    thread = threading.Thread(
        target=server.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def _enqueue(api: AsyncGraphQL, url: str, events: list[str] | None = None) -> str:
    hook: dict[str, Any] = {"url": url}
    if events is not None:
        hook["events"] = events
    data = await api.data(
        "mutation($o: EnqueueOptions) "
        '{ processData(input: {data: "hello", delay: 0.1}, options: $o) { id } }',
        {"o": {"webhook": hook}},
    )
    return str(data["processData"]["id"])


@pytest.mark.parametrize("receiver", [[500, 500]], indirect=True)
async def test_a_delivery_is_signed_and_retried_until_the_receiver_accepts(
    async_api: AsyncGraphQL, receiver: Receiver
) -> None:
    job_id = await _enqueue(async_api, receiver.url)

    await receiver.wait_for(3)

    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(ids) == 1, "every retry is the same message"
    for headers, body in receiver.received:
        assert verify(WEBHOOK_SECRET, headers, body)
        assert not verify("whsec_" + base64.b64encode(b"another key").decode(), headers, body)
        job = json.loads(body)
        assert job["id"] == job_id and job["state"] == "SUCCESS"
        assert job["result"] == {"processed": "hello", "status": "complete"}
    shown = (await async_api.data(DELIVERIES, {"id": job_id}))["job"]["webhookDeliveries"]
    assert [(d["attempt"], d["status"]) for d in shown] == [(1, 500), (2, 500), (3, 200)]
    assert shown[-1]["error"] is None and shown[0]["event"] == "SUCCESS"
    await asyncio.sleep(1)
    assert len(receiver.received) == 3, "one terminal event, one delivery"


async def test_every_state_change_when_asked(async_api: AsyncGraphQL, receiver: Receiver) -> None:
    # By name: the worker connects to the address it checked, the request still names the host.
    port = receiver.server.server_address[1]
    job_id = await _enqueue(async_api, f"http://localhost:{port}/hook", events=["ANY_CHANGE"])

    await receiver.wait_for(2)
    await asyncio.sleep(1)

    # Two deliveries may be in flight at once, so they can arrive in either order: each
    # body's sequence orders them.
    bodies = sorted(
        (json.loads(body) for _, body in receiver.received), key=lambda b: b["sequence"]
    )
    assert [body["state"] for body in bodies] == ["STARTED", "SUCCESS"]
    assert all(body["id"] == job_id for body in bodies)
    assert {headers["host"] for headers, _ in receiver.received} == {f"localhost:{port}"}


async def test_a_workflow_reports_once_it_is_done(
    async_api: AsyncGraphQL, receiver: Receiver
) -> None:
    step = {"task": {"name": "process_data", "input": {"data": 1, "delay": 0.1}}}
    data = await async_api.data(
        "mutation($i: WorkflowInput!, $o: EnqueueOptions) "
        "{ runWorkflow(input: $i, options: $o) { id } }",
        {"i": {"root": {"group": [step, step]}}, "o": {"webhook": {"url": receiver.url}}},
    )

    await receiver.wait_for(1)
    await asyncio.sleep(1)

    assert len(receiver.received) == 1
    headers, body = receiver.received[0]
    assert verify(WEBHOOK_SECRET, headers, body)
    workflow = json.loads(body)
    assert workflow["id"] == data["runWorkflow"]["id"] and workflow["state"] == "SUCCESS"
    assert [s["state"] for s in workflow["steps"]] == ["SUCCESS", "SUCCESS"]
    assert workflow["shape"] == {"group": [{"step": s["id"]} for s in workflow["steps"]]}


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3/hook", "http://169.254.169.254/latest", "ftp://example.com/x"]
)
async def test_a_private_or_odd_url_is_bad_user_input(async_api: AsyncGraphQL, url: str) -> None:
    error = await async_api.error(
        "mutation($o: EnqueueOptions) { processData(input: {data: 1}, options: $o) { id } }",
        {"o": {"webhook": {"url": url}}},
    )

    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert [f["path"] for f in error["extensions"]["fields"]] == ["options.webhook.url"]
