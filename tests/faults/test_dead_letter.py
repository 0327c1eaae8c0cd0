"""A message the worker cannot read is set aside on the dead-letter list; the worker goes on."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.valkey import EmbeddedValkey
from tasks.core.messages import task_message
from tasks.core.records import job_key
from tasks.core.settings import Settings
from tasks.worker.broker import DEAD_LETTER_KEY, envelope
from tests.conftest import running_worker
from tests.support.ledger import Ledger, scale

QUEUE = "dead-letter-test"


def _good(job_id: str) -> str:
    return task_message(
        task="process_data",
        job_id=job_id,
        kwargs={"data": 2, "delay": 0},
        queue=QUEUE,
        now=datetime.now(UTC),
    )


def test_a_well_formed_message_passes_the_envelope_check() -> None:
    message, reason = envelope(_good(str(uuid.uuid4())).encode())
    assert message is not None and reason == ""


@settings(max_examples=scale(300, 3000), deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_bytes_are_either_an_envelope_or_a_reason_never_an_exception(raw: bytes) -> None:
    message, reason = envelope(raw)
    assert (message is None) == bool(reason)


@settings(max_examples=scale(200, 2000), deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
        max_leaves=12,
    )
)
def test_any_json_value_is_either_an_envelope_or_a_reason(value: object) -> None:
    message, reason = envelope(json.dumps(value))
    assert (message is None) == bool(reason)


@pytest.fixture(scope="module")
def lone_worker(
    env: dict[str, str], data_dir: Path, settings: Settings
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker of this module's queue alone: the session's worker is not put at risk."""
    with running_worker(env, data_dir, settings, queues=(QUEUE,), concurrency=1) as process:
        yield process


@pytest.mark.slow
def test_malformed_envelopes_are_set_aside_and_the_worker_keeps_serving(
    valkey: EmbeddedValkey, lone_worker: subprocess.Popen[bytes], ledger: Ledger
) -> None:
    client = redis.Redis.from_url(valkey.url, decode_responses=True)
    client.delete(DEAD_LETTER_KEY)
    bad = [
        "{not json",
        '"a JSON string"',
        '{"body": "e30=", "properties": {}}',
        json.dumps({**json.loads(_good("x")), "properties": {"delivery_tag": "t"}}),
        b"\xff\xfe binary".decode("latin-1"),
    ] * scale(1, 40)
    job_id = str(uuid.uuid4())
    try:
        for raw in bad:
            client.lpush(QUEUE, raw)
        client.lpush(QUEUE, _good(job_id))  # behind the bad ones: popped last

        deadline = time.monotonic() + 30
        while client.hget(job_key(job_id), "state") != "SUCCESS":
            assert lone_worker.poll() is None, "a malformed message ended the worker"
            assert time.monotonic() < deadline, "the good job never ran"
            time.sleep(0.1)

        assert lone_worker.poll() is None
        kept = [json.loads(entry) for entry in client.lrange(DEAD_LETTER_KEY, 0, -1)]
        assert len(kept) == len(bad)
        assert {entry["queue"] for entry in kept} == {QUEUE}
        assert all(entry["size"] > 0 and entry["reason"] for entry in kept)
        assert "{not json" in [entry["raw"] for entry in kept]
        ledger.submitted = len(bad) + 1
        ledger.rejected["dead-letter"] = len(kept)
        ledger.terminal["SUCCESS"] = 1
        ledger.settle()
    finally:
        client.delete(DEAD_LETTER_KEY)
        client.close()
