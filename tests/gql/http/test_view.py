"""A streamed subscription ends with its ending: nothing after multipart's closing boundary.

Strawberry's heartbeat merge, run here as the view runs it (a heartbeat always waiting),
queues a heartbeat after the stream's ending; the view's stream stops right there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from strawberry.http.streaming import MultipartSubscriptionTransport, merge_stream_with_heartbeat

from gql.http.view import ending_at_the_end

MULTIPART = MultipartSubscriptionTransport()
PART = MULTIPART.encode_next({"data": {"job": {"state": "SUCCESS"}}}, lambda v: str(v))
END = MULTIPART.encode_complete()
HEARTBEAT = MULTIPART.heartbeat_message(lambda v: "{}")


async def _subscription() -> AsyncIterator[str]:
    yield PART
    yield PART
    yield END


def _with_heartbeats() -> AsyncIterator[str]:
    return merge_stream_with_heartbeat(
        _subscription, lambda: HEARTBEAT, interval=0.05, send_initial_heartbeat=False
    )()


async def _read(stream: AsyncIterator[str]) -> list[str]:
    """A client that falls behind after the first part: the second part fills the merge's
    one-slot queue, the ending waits for the slot, and a heartbeat queues up behind it."""
    chunks = [await anext(stream)]
    await asyncio.sleep(0.5)
    try:
        async for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 10:
                break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return chunks


async def test_strawberrys_merge_can_send_a_heartbeat_after_the_end() -> None:
    """Upstream's behaviour this guards against; if it changes, the guard may go."""
    chunks = await _read(_with_heartbeats())
    assert END in chunks
    assert chunks[chunks.index(END) + 1 :][:1] == [HEARTBEAT]


async def test_the_view_s_stream_stops_at_its_ending() -> None:
    chunks = await _read(ending_at_the_end(_with_heartbeats)())
    assert chunks[-1] == END and PART in chunks
    body = "".join(chunks)
    assert body.endswith("\r\n--graphql--\r\n") and body.count("--graphql--") == 1
