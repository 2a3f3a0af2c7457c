"""LlamaCppEngine on the real SmolLM2-135M-Instruct GGUF (marked ``model``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

import pytest

from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    LLMBackendError,
    LLMDelta,
    LLMEngine,
    TextDelta,
    assistant_message,
)
from voxbus.services.llm.llama_engine import LlamaCppEngine

pytestmark = pytest.mark.model
log = logging.getLogger(__name__)

SYSTEM: ChatMessage = {
    "role": "system",
    "content": "You are a helpful voice assistant. Answer in one short sentence.",
}
QUESTION: ChatMessage = {"role": "user", "content": "What is the capital of France?"}
STORY: ChatMessage = {"role": "user", "content": "Tell me a long story about a brave dragon."}

# About 200 tokens of system prompt: what a real agent persona costs on a cold start.
LONG_SYSTEM: ChatMessage = {
    "role": "system",
    "content": (
        "You are Ava, the friendly phone assistant of the Riverside Pharmacy. You speak with "
        "callers over the phone, so keep every answer short, warm and easy to understand when "
        "heard rather than read. Never use lists, markdown, emoji or symbols. The pharmacy is "
        "open Monday to Friday from nine in the morning to seven in the evening, and on "
        "Saturday from ten to four. It is closed on Sunday and on public holidays. Callers can "
        "ask about opening hours, prescription refills, vaccinations, and where to park. "
        "Prescription refills are ready two hours after they are requested. Flu vaccinations "
        "need no appointment. Parking is free behind the building, entrance on Mill Street. If "
        "a caller asks for medical advice, tell them kindly that a pharmacist will call them "
        "back, and ask for their name and number. If you do not know something, say so "
        "honestly. Always be polite, and end the call when the caller says goodbye."
    ),
}


def text_of(deltas: list[LLMDelta]) -> str:
    return "".join(d.text for d in deltas if isinstance(d, TextDelta))


async def ttft_and_reply(engine: LLMEngine, messages: list[ChatMessage]) -> tuple[float, str]:
    started = time.perf_counter()
    first: float | None = None
    deltas: list[LLMDelta] = []
    async for delta in engine.stream(messages):
        if first is None and isinstance(delta, TextDelta):
            first = time.perf_counter() - started
        deltas.append(delta)
    assert first is not None and isinstance(deltas[-1], FinishDelta)
    return first, text_of(deltas)


async def test_streams_a_reply_incrementally(llama_engine: LlamaCppEngine) -> None:
    await llama_engine.warmup([SYSTEM])
    started = time.perf_counter()
    arrivals: list[float] = []
    deltas: list[LLMDelta] = []
    async for delta in llama_engine.stream([SYSTEM, QUESTION]):
        arrivals.append(time.perf_counter() - started)
        deltas.append(delta)
    text = text_of(deltas)
    log.info(
        "reply=%r ttft=%.0f ms total=%.0f ms stats=%s",
        text,
        arrivals[0] * 1e3,
        arrivals[-1] * 1e3,
        llama_engine.last_stats,
    )
    assert text.strip()
    assert sum(isinstance(d, TextDelta) for d in deltas) >= 3
    assert arrivals[-2] > arrivals[0]  # tokens arrive over time, not in one batch
    assert isinstance(deltas[-1], FinishDelta) and deltas[-1].reason in ("stop", "length")


async def test_cancel_mid_stream_stops_fast_and_engine_is_reusable(
    llama_engine: LlamaCppEngine,
) -> None:
    await llama_engine.warmup([SYSTEM])
    got: list[LLMDelta] = []
    five = asyncio.Event()

    async def consume() -> None:
        async for delta in llama_engine.stream([SYSTEM, STORY]):
            got.append(delta)
            if len(got) == 5:
                five.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(five.wait(), timeout=30)
    cancelled_at = time.perf_counter()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stream_stop_s = time.perf_counter() - cancelled_at
    await llama_engine.wait_idle()
    worker_stop_s = time.perf_counter() - cancelled_at
    log.info(
        "cancel: stream stopped in %.1f ms, worker idle in %.1f ms",
        stream_stop_s * 1e3,
        worker_stop_s * 1e3,
    )
    # the consumer is released at once, the worker at its next token (~15-30 ms when idle;
    # the bounds are loose for a loaded 2-core machine)
    assert stream_stop_s < 0.5
    assert worker_stop_s < 1.0
    assert not any(isinstance(d, FinishDelta) for d in got)

    # leaving the loop and closing the generator works the same way
    async with contextlib.aclosing(llama_engine.stream([SYSTEM, STORY])) as stream:
        async for _ in stream:
            closed_at = time.perf_counter()
            break
    assert time.perf_counter() - closed_at < 0.05

    # reusable at once: no waiting for the worker, the next turn just queues behind it
    _, text = await ttft_and_reply(llama_engine, [SYSTEM, QUESTION])
    assert text.strip()


async def test_warm_prefix_is_reused_and_faster_than_cold(smollm2_path: Path) -> None:
    engine = LlamaCppEngine(model_path=smollm2_path, n_threads=1, temperature=0.0, max_tokens=40)
    try:
        await engine.warmup([])  # load only (evaluates the default system prompt, not ours)
        history: list[ChatMessage] = [LONG_SYSTEM, {"role": "user", "content": "When do you open?"}]
        cold_s, reply = await ttft_and_reply(engine, history)
        cold = engine.last_stats
        assert cold is not None and cold.prompt_tokens >= 180
        history += [assistant_message(reply), {"role": "user", "content": "And on Saturday?"}]
        warm_s, reply2 = await ttft_and_reply(engine, history)
        warm = engine.last_stats
        assert warm is not None
        log.info(
            "cold ttft=%.0f ms (prompt %d tokens), warm ttft=%.0f ms (prompt %d, reused %d)",
            cold_s * 1e3,
            cold.prompt_tokens,
            warm_s * 1e3,
            warm.prompt_tokens,
            warm.reused_tokens,
        )
        # Turn 2 reuses every token of turn 1, including the reply exactly as sampled.
        assert warm.reused_tokens >= cold.prompt_tokens + cold.generated_tokens - 1
        assert warm_s < cold_s

        # Barge-in: only part of reply 2 was spoken; the cut reply still reuses its tokens.
        spoken = reply2[: max(1, len(reply2) // 2)]
        history += [assistant_message(spoken), {"role": "user", "content": "Thanks."}]
        await ttft_and_reply(engine, history)
        cut = engine.last_stats
        assert cut is not None
        assert cut.reused_tokens > warm.prompt_tokens
    finally:
        await engine.aclose()


async def test_warmup_makes_the_first_turn_warm(smollm2_path: Path) -> None:
    engine = LlamaCppEngine(model_path=smollm2_path, n_threads=1, temperature=0.0, max_tokens=8)
    try:
        await engine.warmup([LONG_SYSTEM])
        await ttft_and_reply(engine, [LONG_SYSTEM, QUESTION])
        stats = engine.last_stats
        assert stats is not None and stats.reused_tokens >= 180
        assert engine.load_s is not None
    finally:
        await engine.aclose()


async def test_prompt_longer_than_context_is_a_backend_error(smollm2_path: Path) -> None:
    engine = LlamaCppEngine(model_path=smollm2_path, n_ctx=256, n_threads=1)
    try:
        with pytest.raises(LLMBackendError, match="n_ctx"):
            async for _ in engine.stream([{"role": "user", "content": "word " * 400}]):
                pass
        _, text = await ttft_and_reply(engine, [SYSTEM, QUESTION])  # still usable
        assert text.strip()
    finally:
        await engine.aclose()
    with pytest.raises(LLMBackendError, match="closed"):
        async for _ in engine.stream([QUESTION]):
            pass


async def test_a_prewarmed_conversation_starts_warm(smollm2_path: Path) -> None:
    """A conversation whose oldest turns went starts differently from what the cache holds;
    ``prewarm`` reads it between turns, so the next turn evaluates only the user's words."""
    engine = LlamaCppEngine(model_path=smollm2_path, n_threads=1, n_threads_batch=2,
                            max_tokens=8)
    try:
        await engine.warmup([LONG_SYSTEM])
        await ttft_and_reply(engine, [LONG_SYSTEM, QUESTION])  # the cache: another conversation
        kept: list[ChatMessage] = [LONG_SYSTEM]
        for n in range(4):
            kept += [{"role": "user", "content": f"Question number {n} about parking?"},
                     assistant_message(f"Parking is free behind the building, answer {n}.")]
        assert await engine.prewarm(kept)
        await ttft_and_reply(engine, [*kept, {"role": "user", "content": "And on Sunday?"}])
        stats = engine.last_stats
        assert stats is not None and stats.prompt_tokens - stats.reused_tokens < 20, stats
    finally:
        await engine.aclose()


async def test_a_reply_never_waits_for_a_prewarm(smollm2_path: Path) -> None:
    engine = LlamaCppEngine(model_path=smollm2_path, n_threads=1, max_tokens=8)
    try:
        await engine.warmup([SYSTEM])
        long: list[ChatMessage] = [LONG_SYSTEM]
        for n in range(12):  # about 600 tokens: seconds to read on one thread
            long += [{"role": "user", "content": f"Question number {n} about parking, please?"},
                     assistant_message(f"Parking is free behind the building, answer {n}.")]
        prewarm = asyncio.create_task(engine.prewarm(long))
        await asyncio.sleep(0.2)
        first_s, text = await ttft_and_reply(engine, [SYSTEM, QUESTION])
        assert await prewarm is False  # stopped within a chunk
        assert text.strip() and first_s < 2.0, first_s
        started = time.perf_counter()
        assert await engine.prewarm(long)  # left alone, it reads to the end
        log.info("prewarm of %d messages: %.2f s", len(long), time.perf_counter() - started)
    finally:
        await engine.aclose()
