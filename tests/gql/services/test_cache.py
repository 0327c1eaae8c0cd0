"""The shared, short-lived answers behind the health checks, in process."""

from __future__ import annotations

import asyncio

from gql.services.cache import Cached


async def test_concurrent_callers_share_one_call_and_the_answer_is_reused() -> None:
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return calls

    cached = Cached(compute, seconds=60)
    assert await asyncio.gather(*(cached.get() for _ in range(50))) == [1] * 50
    assert await cached.get() == 1 and calls == 1


async def test_a_refused_answer_is_computed_again() -> None:
    answers = iter([False, True, False])

    async def compute() -> bool:
        return next(answers)

    cached = Cached(compute, seconds=60, keep=bool)
    assert await cached.get() is False
    assert await cached.get() is True, "a failure is not served again: recovery shows at once"
    assert await cached.get() is True
