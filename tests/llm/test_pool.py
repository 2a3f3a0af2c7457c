"""The engine pool: two sessions' replies are generated at once, each conversation goes back to
the engine that holds its prompt in cache, and a third stream waits for a free engine."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from voxbus.services.llm.engine import ChatMessage, TextDelta
from voxbus.services.llm.fake import FakeLLM, FakeTurn
from voxbus.services.llm.pool import EnginePool

pytestmark = pytest.mark.fast


def convo(name: str, turns: int) -> list[ChatMessage]:
    out: list[ChatMessage] = [{"role": "system", "content": "be brief"}]
    for n in range(turns):
        out.append({"role": "user", "content": f"{name} question {n}"})
        out.append({"role": "assistant", "content": f"{name} answer {n}"})
    return out + [{"role": "user", "content": f"{name} question {turns}"}]


async def drain(pool: EnginePool, messages: list[ChatMessage]) -> tuple[float, float]:
    """When the first and the last delta came (monotonic)."""
    first = last = 0.0
    async with contextlib.aclosing(pool.stream(messages)) as deltas:
        async for delta in deltas:
            if isinstance(delta, TextDelta):
                first = first or time.monotonic()
                last = time.monotonic()
    return first, last


def slow() -> FakeLLM:
    return FakeLLM([FakeTurn.words("one two three four five six", token_delay_s=0.05)])


async def test_two_replies_are_generated_at_once() -> None:
    a, b = slow(), slow()
    pool = EnginePool([a, b])
    t0 = time.monotonic()
    (first_a, last_a), (first_b, _) = await asyncio.gather(
        drain(pool, convo("ann", 1)), drain(pool, convo("bob", 1)))
    assert first_b - t0 < 0.1 and first_a - t0 < 0.1, "a reply waited for the other"
    assert len(a.calls) == len(b.calls) == 1
    assert last_a - t0 < 0.5


async def test_a_third_stream_waits_for_a_free_engine() -> None:
    pool = EnginePool([slow(), slow()])
    t0 = time.monotonic()
    results = await asyncio.gather(drain(pool, convo("ann", 1)), drain(pool, convo("bob", 1)),
                                   drain(pool, convo("cy", 0)))
    assert results[2][0] - t0 > 0.2, "a third reply ran on a busy engine"


async def test_a_conversation_goes_back_to_the_engine_that_holds_it() -> None:
    a, b = slow(), slow()
    pool = EnginePool([a, b])
    await asyncio.gather(drain(pool, convo("ann", 1)), drain(pool, convo("bob", 1)))
    ann_engine, bob_engine = (a, b) if a.calls[0][0] == convo("ann", 1) else (b, a)
    for turn in (2, 3):  # one after the other: both engines are free each time
        await drain(pool, convo("bob", turn))
        await drain(pool, convo("ann", turn))
    assert [c[0][-1]["content"] for c in ann_engine.calls] == [
        "ann question 1", "ann question 2", "ann question 3"]
    assert [c[0][-1]["content"] for c in bob_engine.calls] == [
        "bob question 1", "bob question 2", "bob question 3"]


class Warming(FakeLLM):
    """A FakeLLM whose prewarm takes ``prewarm_s`` (a long conversation read again)."""

    def __init__(self, prewarm_s: float) -> None:
        super().__init__([FakeTurn.words("one two three four five six", token_delay_s=0.05)])
        self.prewarm_s = prewarm_s
        self.prewarmed: list[list[ChatMessage]] = []

    async def prewarm(self, messages: list[ChatMessage], tools: object = None) -> bool:
        await asyncio.sleep(self.prewarm_s)
        self.prewarmed.append(list(messages))
        return True


async def test_a_prewarmed_conversation_takes_the_engine_that_read_it() -> None:
    a, b = Warming(0.05), Warming(0.05)
    pool = EnginePool([a, b])
    await pool.warmup(convo("x", 0)[:1])  # both hold the system prompt
    await asyncio.sleep(0.05)  # the second warms in the background
    await drain(pool, convo("ann", 1))  # ann's conversation is on a
    shorter = convo("bob", 3)[:-1]  # bob's, its oldest turns gone: on the other free engine
    assert await pool.prewarm(shorter)
    await drain(pool, [*shorter, {"role": "user", "content": "bob question 3"}])
    warmed = a if a.prewarmed else b
    assert warmed.prewarmed == [shorter] and len(warmed.calls) == 1


async def test_a_turn_never_waits_for_a_prewarm() -> None:
    pool = EnginePool([Warming(5.0)])
    prewarm = asyncio.create_task(pool.prewarm(convo("bob", 3)[:-1]))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    first, _ = await drain(pool, convo("ann", 1))
    assert first - t0 < 0.3, "the turn waited for the prewarm"
    assert await prewarm is False  # stopped, not finished
