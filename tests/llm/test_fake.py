from __future__ import annotations

import asyncio
import time

import pytest

from voxbus.services.llm.engine import FinishDelta, LLMDelta, LLMEngine, TextDelta, ToolCallDelta
from voxbus.services.llm.fake import FakeLLM, FakeTurn

pytestmark = pytest.mark.fast


async def collect(engine: LLMEngine) -> list[LLMDelta]:
    return [d async for d in engine.stream([{"role": "user", "content": "hi"}])]


async def test_plays_turns_in_order_with_delays() -> None:
    call = ToolCallDelta(id="c1", name="get_current_time", arguments="{}")
    fake = FakeLLM([
        FakeTurn(tool_calls=[call]),
        FakeTurn.words("It is one o'clock.", first_token_delay_s=0.05, token_delay_s=0.01),
    ])  # fmt: skip
    assert await collect(fake) == [call, FinishDelta("tool_calls")]
    started = time.perf_counter()
    deltas = await collect(fake)
    assert time.perf_counter() - started >= 0.05 + 3 * 0.01 - 0.005
    assert "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "It is one o'clock."
    assert deltas[-1] == FinishDelta("stop")
    assert len(fake.calls) == 2 and fake.calls[0][0] == [{"role": "user", "content": "hi"}]
    await collect(fake)  # the last turn repeats
    assert len(fake.calls) == 3


async def test_cancellation_is_counted() -> None:
    fake = FakeLLM([FakeTurn.words("one two three four five", token_delay_s=0.05)])

    async def consume() -> None:
        async for _ in fake.stream([]):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.07)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert fake.cancelled == 1
