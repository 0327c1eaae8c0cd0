"""The hand-written Celery message, proven against Celery's own producer and a real worker."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.app.task import Context
from celery.utils.imports import symbol_by_name
from celery.worker.request import Request

from devtools.valkey import EmbeddedValkey
from tasks.core.app import create_celery_app
from tasks.core.base import owner_hint
from tasks.core.message_writer import differences, offline_channel, sample_options, stock_message
from tasks.core.messages import HIDDEN_INPUT, queue_key, task_message
from tasks.core.settings import Settings
from tests.conftest import JOB_FIELDS, GraphQL, running_api, running_worker, service_env

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
KWARGS = {"user_id": 7, "data": {"rows": [1, 2, 3], "name": "Zoë"}, "flag": None}

ENQUEUE = f"""
mutation($t: String!, $i: JSON!, $o: EnqueueOptions) {{
  enqueue(task: $t, input: $i, options: $o) {{ {JOB_FIELDS} }}
}}
"""


def _enqueue(api: GraphQL, task: str, data: dict[str, Any], options: dict[str, Any]) -> dict:
    return api.data(ENQUEUE, {"t": task, "i": data, "o": options})["enqueue"]


@pytest.fixture(scope="module")
def producer_app(settings: Settings) -> Iterator[Celery]:
    app = create_celery_app(settings, producer=True)
    yield app
    app.close()


def _request(options: dict[str, Any]) -> dict[str, Any]:
    return {
        "task": "reports.generate",
        "job_id": str(uuid.uuid4()),
        "kwargs": KWARGS,
        "queue": "jobql",
        "now": NOW,
        **options,
    }


@pytest.mark.parametrize("options", sample_options(NOW), ids=repr)
def test_our_message_is_celerys_as_task_v2_field_by_field(
    producer_app: Celery, options: dict[str, Any]
) -> None:
    request = _request(options)
    ours = json.loads(task_message(**request))
    transport_options = producer_app.conf.broker_transport_options

    with offline_channel(transport_options) as channel:
        stock = stock_message(producer_app, channel, **request)
        stored_on = channel._q_for_pri(request["queue"], channel._get_message_priority(ours))

    assert differences(stock, ours) == []
    assert stored_on == queue_key(request["queue"], request.get("priority"))
    # The comparison reaches every field a worker reads, not just the keys.
    headers = ours["headers"]
    assert headers["id"] == headers["root_id"] == request["job_id"]
    assert headers["eta"] == stock["headers"]["eta"]
    assert ours["properties"]["priority"] == (options.get("priority") or 0)


def test_a_changed_field_is_named_as_a_difference(producer_app: Celery) -> None:
    request = _request({"priority": 7})
    ours = json.loads(task_message(**request))
    with offline_channel(producer_app.conf.broker_transport_options) as channel:
        stock = stock_message(producer_app, channel, **request)
    stock["headers"]["retries"] = 1
    stock["headers"]["new_in_celery_6"] = True
    del stock["properties"]["delivery_mode"]

    assert differences(stock, ours) == [
        "headers.new_in_celery_6: only in stock",
        "headers.retries: stock 1, ours 0",
        "properties.delivery_mode: only in ours",
    ]


# What Celery's producer itself pushes onto Redis, read back raw from the real Valkey. The
# clock of ``send_task`` runs on, so the values it derives from "now" are compared apart.
SENT_SPREAD = [
    {},
    {"priority": 7},
    {"priority": 9, "queue": "probe-b"},
    {"eta": NOW + timedelta(days=3650)},
    {"expires": datetime.now(UTC) + timedelta(hours=1)},
]


# Named by their keys: an id holding "now" would differ between pytest-xdist's workers.
@pytest.mark.parametrize("options", SENT_SPREAD, ids=lambda o: "+".join(o) or "defaults")
def test_our_message_is_what_celerys_producer_stores_on_redis(
    producer_app: Celery, valkey: EmbeddedValkey, options: dict[str, Any]
) -> None:
    queue = f"probe-{uuid.uuid4().hex[:8]}"
    request = _request({**options, "queue": queue, "now": datetime.now(UTC)})
    producer_app.send_task(
        request["task"],
        kwargs=KWARGS,
        task_id=request["job_id"],
        queue=queue,
        eta=request.get("eta"),
        expires=request.get("expires"),
        priority=request.get("priority"),
    )
    with redis.Redis.from_url(valkey.url) as client:
        raw = client.rpop(queue_key(queue, request.get("priority")))
    assert raw is not None, "Celery's producer put the message elsewhere"
    stock = json.loads(raw)
    ours = json.loads(task_message(**request))

    assert differences(stock, ours, ignore=frozenset({"properties.expiration"})) == []
    # Neither shows the input where Flower, `celery events` and `celery inspect` read it.
    assert stock["headers"]["kwargsrepr"] == ours["headers"]["kwargsrepr"] == HIDDEN_INPUT
    assert stock["headers"]["argsrepr"] == "()"
    if "expires" in options:
        drift = int(stock["properties"]["expiration"]) - int(ours["properties"]["expiration"])
        assert abs(drift) < 5_000


def test_a_job_with_a_non_default_priority_runs_to_success(api: GraphQL) -> None:
    job = _enqueue(api, "process_data", {"data": "urgent", "delay": 0}, {"priority": 7})

    done = api.wait_done(job["id"])

    assert done["state"] == "SUCCESS", done
    assert done["result"] == {"processed": "urgent", "status": "complete"}


@pytest.mark.slow
def test_a_more_urgent_job_overtakes_the_ones_already_waiting(
    valkey: EmbeddedValkey, data_dir: Path, settings: Settings, api: GraphQL
) -> None:
    """On Redis a lower number is served first: priority 2 before the 9s queued earlier."""
    env = service_env(valkey.url, data_dir, JOBQL_EXTRA_QUEUES='["reports", "waiting"]')
    with running_api(env, data_dir) as client:
        data = {"data": "x", "delay": 0}
        low = [
            _enqueue(client, "process_data", data, {"queue": "waiting", "priority": 9})["id"]
            for _ in range(3)
        ]
        urgent = _enqueue(client, "process_data", data, {"queue": "waiting", "priority": 2})["id"]
        # One process, one message at a time: the order it takes them is the order they run.
        worker = running_worker(env, data_dir, settings, queues=("waiting",), concurrency=1)
        with worker:
            done = [client.wait_done(job_id) for job_id in [urgent, *low]]

    assert all(job["state"] == "SUCCESS" for job in done), done
    started = sorted(done, key=lambda job: job["startedAt"])
    assert [job["id"] for job in started] == [urgent, *low]


def test_celerys_producer_stands_in_when_fast_paths_are_off(
    valkey: EmbeddedValkey, data_dir: Path, worker: subprocess.Popen[bytes]
) -> None:
    env = service_env(valkey.url, data_dir, JOBQL_FAST_PATHS="false")
    with running_api(env, data_dir) as client:
        job = _enqueue(client, "process_data", {"data": "stock", "delay": 0}, {"priority": 7})
        assert job["state"] == "PENDING"

        done = client.wait_done(job["id"])

    assert done["state"] == "SUCCESS", done
    assert done["result"] == {"processed": "stock", "status": "complete"}


def test_the_owner_header_reaches_the_request_the_task_runs_in(producer_app: Celery) -> None:
    """The worker names the owner's indexes from the message, not from a guess: Celery
    makes the message's own header an attribute of the request (as it builds it for the
    tracer), and a message without it (plain Celery, an older API) names no owner."""
    app = Celery("owner-header", set_as_current=False)

    @app.task(name="reports.generate", shared=False)  # type: ignore[untyped-decorator]
    def generate(**kwargs: Any) -> None:
        """Never run: only its request is built."""

    for owner, expected in (("ada", "ada"), (None, None)):
        body = task_message(**_request({}), owner=owner)
        with offline_channel(producer_app.conf.broker_transport_options) as channel:
            message = channel.Message(json.loads(body), channel=channel)
            request = Request(message, app=app, task=generate)
            assert owner_hint(Context(request.request_dict)) == expected


def test_a_worker_shows_no_input_whoever_sent_the_message(
    producer_app: Celery, settings: Settings
) -> None:
    """A plain Celery producer writes up to 1 KB of the input into ``kwargsrepr``: the
    worker's request of a JobQL task shows neither that nor the input itself, in its task
    events (``argsrepr``/``kwargsrepr``) or in its answers to ``celery inspect``, which ask
    for the input itself (``info()``, as Flower's worker page does)."""
    app = create_celery_app(settings)  # a worker's app: its tasks are JobTasks

    @app.task(name="reports.generate", shared=False)  # type: ignore[untyped-decorator]
    def generate(**kwargs: Any) -> None:
        """Never run: only its request is built."""

    message = json.loads(task_message(**_request({})))
    message["headers"]["kwargsrepr"] = repr(KWARGS)  # as stock Celery writes it
    message["headers"]["argsrepr"] = "('secret',)"
    job_request = symbol_by_name(generate.Request)
    with offline_channel(producer_app.conf.broker_transport_options) as channel:
        request = job_request(channel.Message(message, channel=channel), app=app, task=generate)

    assert request.argsrepr == request.kwargsrepr == HIDDEN_INPUT
    for shown in (request.info(), request.info(safe=True)):
        assert shown["args"] == shown["kwargs"] == HIDDEN_INPUT
        assert "Zo" not in json.dumps(shown, default=str)
    empty = json.loads(task_message(**{**_request({}), "kwargs": {}}))
    with offline_channel(producer_app.conf.broker_transport_options) as channel:
        request = job_request(channel.Message(empty, channel=channel), app=app, task=generate)
    assert (request.argsrepr, request.kwargsrepr) == ("()", "{}"), "no input: shown as none"
