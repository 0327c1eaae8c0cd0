"""Live progress under strain: Redis restarts, slow clients, many replicas, many watchers.

These tests get a stack of their own (Valkey, worker, two API replicas), so restarting
Redis here cannot disturb the rest of the suite.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from websockets.sync.client import connect

from gql.devserver import EmbeddedValkey
from tasks.settings import Settings
from tests.clients import Stream, graphql_transport_ws, sse
from tests.conftest import GraphQL, running_api, running_worker, service_env
from tests.test_subscriptions import WATCH, _assert_well_ordered, _report


@dataclass
class Stack:
    valkey: EmbeddedValkey
    a: GraphQL
    b: GraphQL

    def stats(self, api: GraphQL) -> dict[str, Any]:
        return api.http.get("/health/stats").json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("live")
    valkey = EmbeddedValkey(data_dir / "valkey").start()
    env = service_env(
        valkey.url,
        data_dir,
        JOBQL_KEEP_ALIVE_INTERVAL="0.5",
        JOBQL_CONNECTION_INIT_TIMEOUT="1",
        JOBQL_SUBSCRIBER_QUEUE_LIMIT="32",
    )
    settings = Settings(redis_url=valkey.url)
    try:
        with (
            running_worker(env, data_dir, settings),
            running_api(env, data_dir) as a,
            running_api(env, data_dir) as b,
        ):
            yield Stack(valkey, a, b)
    finally:
        valkey.stop()


def _in_background(fn: Any, *args: Any, **kwargs: Any) -> tuple[threading.Thread, list[Stream]]:
    out: list[Stream] = []
    thread = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, out


def _watch_until_progress(
    client: Any, base_url: str, job_id: str
) -> tuple[threading.Thread, list[Stream]]:
    """Watch ``job_id`` in the background; return once its first progress report arrived."""
    seen_progress = threading.Event()
    thread, out = _in_background(
        client,
        base_url,
        WATCH,
        {"id": job_id},
        timeout=90,
        on_result=lambda r: seen_progress.set() if r["data"]["job"]["progress"] else None,
    )
    assert seen_progress.wait(30), "progress never arrived"
    return thread, out


def test_a_job_enqueued_on_one_replica_is_watched_live_on_another(stack: Stack) -> None:
    job_id = _report(stack.a, steps=10, delay=0.05, countdown=0.3)

    stream = graphql_transport_ws(stack.b.base_url, WATCH, {"id": job_id})

    assert stream.completed
    assert [j["state"] for j in stream.jobs][:2] == ["PENDING", "STARTED"]
    assert stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)


def test_a_redis_restart_mid_stream_loses_no_state_change(stack: Stack) -> None:
    job_id = _report(stack.a, steps=60, delay=0.05)
    thread, out = _watch_until_progress(graphql_transport_ws, stack.b.base_url, job_id)

    stack.valkey.stop()
    time.sleep(0.5)
    stack.valkey.start()

    thread.join(90)
    assert out, "the subscription never ended"
    stream = out[0]
    assert stream.completed and not stream.errors, stream.errors
    assert stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)
    assert stack.a.wait_done(job_id)["state"] == "SUCCESS", "the job itself still completes"
    assert stack.stats(stack.b)["reconnects"] >= 1


def _slow_socket(base_url: str) -> socket.socket:
    """A client socket with a small receive window, as a phone on a poor link has."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = base_url.removeprefix("http://").split(":")
    sock.connect((host, int(port)))
    return sock


def test_a_killed_pubsub_connection_heals_without_losing_the_end(stack: Stack) -> None:
    job_id = _report(stack.a, steps=40, delay=0.05)
    thread, out = _watch_until_progress(sse, stack.a.base_url, job_id)
    client = redis.Redis.from_url(stack.valkey.url)
    assert client.client_kill_filter(_type="pubsub") >= 1  # what Redis does to a slow reader
    client.close()

    thread.join(60)
    stream = out[0]
    assert stream.completed and stream.jobs[-1]["state"] == "SUCCESS"
    _assert_well_ordered(stream.jobs)


def test_a_slow_consumer_gets_every_state_change_and_does_not_slow_others(
    stack: Stack,
) -> None:
    job_id = _report(stack.a, steps=1000, delay=0.004, countdown=1)
    fast_thread, fast_out = _in_background(
        graphql_transport_ws, stack.a.base_url, WATCH, {"id": job_id}
    )
    states: list[str] = []
    high_water = 0
    with connect(
        stack.a.base_url.replace("http", "ws") + "/graphql",
        sock=_slow_socket(stack.a.base_url),
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        compression=None,
        max_queue=1,
        ping_interval=None,
    ) as ws:
        ws.send(json.dumps({"type": "connection_init"}))
        assert json.loads(ws.recv(10))["type"] == "connection_ack"
        payload = {"query": WATCH, "variables": {"id": job_id}}
        ws.send(json.dumps({"id": "slow", "type": "subscribe", "payload": payload}))
        slow_until = time.monotonic() + 10
        fast_done_while_slow = False
        while True:
            message = json.loads(ws.recv(60))
            if message["type"] == "complete":
                break
            if message["type"] != "next":
                continue  # the server's keep-alive pings
            states.append(message["payload"]["data"]["job"]["state"])
            if time.monotonic() < slow_until:
                high_water = max(high_water, stack.stats(stack.a)["pending_events"])
                fast_done_while_slow = fast_done_while_slow or not fast_thread.is_alive()
                time.sleep(1)  # one message a second, then it catches up

    fast_thread.join(60)
    fast = fast_out[0]
    assert fast.completed and fast.jobs[-1]["state"] == "SUCCESS"
    assert fast_done_while_slow, "the fast subscriber finished while the slow one lagged"
    assert len(fast.jobs) > 100, "the fast subscriber saw progress as it happened"
    assert states[:2] == ["PENDING", "STARTED"] and states[-1] == "SUCCESS"
    if stack.stats(stack.a)["fast_paths"]["bounded_sockets"]["active"]:
        # Stock uvicorn lets the kernel buffer megabytes: the backlog parks there instead.
        assert len(states) < 800, "progress for a slow consumer is coalesced, latest wins"
    assert high_water <= 32, "what the server holds for a slow subscriber stays bounded"


def test_two_hundred_subscriptions_leave_nothing_behind(stack: Stack) -> None:
    before = stack.stats(stack.a)
    finished = [_report(stack.a, steps=1, delay=0) for _ in range(4)]
    for job_id in finished:
        stack.a.wait_done(job_id)
    running = _report(stack.a, steps=400, delay=0.05)

    for i in range(200):
        # Half read to completion; half vanish mid-stream without a word.
        if i % 2 == 0:
            assert graphql_transport_ws(stack.a.base_url, WATCH, {"id": finished[i % 4]}).completed
        else:
            ws = connect(
                stack.a.base_url.replace("http", "ws") + "/graphql",
                subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            )
            ws.send(json.dumps({"type": "connection_init"}))
            ws.recv(10)
            payload = {"query": WATCH, "variables": {"id": running}}
            ws.send(json.dumps({"id": str(i), "type": "subscribe", "payload": payload}))
            ws.recv(10)
            ws.socket.close()  # the client vanishes

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = stack.stats(stack.a)
        if after["channels"] == 0 and after["tasks"] <= before["tasks"]:
            break
        time.sleep(0.1)
    assert after["channels"] == 0 and after["subscribers"] == 0 and after["locks"] == 0
    assert after["tasks"] <= before["tasks"], (before, after)
    client = redis.Redis.from_url(stack.valkey.url)
    assert client.pubsub_numsub(f"jobql:events:job:{running}") == [
        (f"jobql:events:job:{running}".encode(), 0)
    ]
    client.close()
    stack.a.data(
        "mutation($id: ID!) { cancelJob(id: $id, terminate: true) { id } }", {"id": running}
    )


def test_the_jobs_stream_sends_every_change_of_matching_jobs(stack: Stack) -> None:
    query = 'subscription { jobs(filter: {task: "process_data"}) { id task state sequence } }'
    results: list[dict[str, Any]] = []
    ready = threading.Event()

    def watch() -> None:
        with connect(
            stack.b.base_url.replace("http", "ws") + "/graphql",
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
        ) as ws:
            ws.send(json.dumps({"type": "connection_init"}))
            ws.recv(10)
            ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            ready.set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    message = json.loads(ws.recv(0.5))
                except TimeoutError:
                    continue
                if message["type"] == "next":
                    results.append(message["payload"]["data"]["jobs"])
                    if sum(r["state"] == "SUCCESS" for r in results) == 2:
                        return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    assert ready.wait(10)
    time.sleep(0.3)
    ids = [
        stack.a.data("mutation { processData(input: {data: 1, delay: 0.2}) { id } }")[
            "processData"
        ]["id"]
        for _ in range(2)
    ]
    _report(stack.a, steps=1, delay=0)  # another task: filtered out on the server
    thread.join(30)

    assert {r["task"] for r in results} == {"process_data"}
    for job_id in ids:
        states = [r["state"] for r in results if r["id"] == job_id]
        assert states == ["PENDING", "STARTED", "SUCCESS"], states
        sequences = [r["sequence"] for r in results if r["id"] == job_id]
        assert sequences == sorted(set(sequences))


def test_keep_alive_pings_and_the_connection_init_timeout(stack: Stack) -> None:
    job_id = _report(stack.a, steps=20, delay=0.1)
    assert graphql_transport_ws(stack.a.base_url, WATCH, {"id": job_id}).pings >= 2
    assert sse(stack.a.base_url, WATCH, {"id": job_id}).completed

    with connect(
        stack.a.base_url.replace("http", "ws") + "/graphql",
        subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
    ) as ws:
        with pytest.raises(Exception) as closed:
            ws.recv(5)  # never send connection_init
        assert getattr(closed.value, "rcvd", None) is not None
        assert closed.value.rcvd.code == 4408  # type: ignore[attr-defined]


def test_health_reports_the_broadcast_connection(stack: Stack) -> None:
    health = stack.a.data("{ health { broadcast { ok } } }")["health"]
    assert health["broadcast"]["ok"] is True
