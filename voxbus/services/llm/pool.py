"""Several local engines behind one ``LLMEngine``, so one session's reply never waits behind
another's later tokens.

One llama.cpp context generates one sequence at a time: with two rooms, the second room's first
clause waited for the whole of the first room's reply (the LLM's first text at 1.35-1.7 s p50
with two rooms against 0.72-0.78 s with one). The pool holds ``n`` engines (each its own copy of
the model, about 100 MB for SmolLM2-135M, and its own prompt cache and thread); a stream takes
a free engine, preferring the one whose last prompt shares the most leading messages with its own
(that engine's cache holds the conversation, so a session keeps coming back to it), and waits
for one when all are busy. The engines' threads run at the stage's ``nice``: the STT's finals and
the TTS's first units keep the CPU first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

from voxbus.services.llm.engine import ChatMessage, LLMDelta, LLMEngine, ToolSpec


def _shared_prefix(a: Sequence[ChatMessage], b: Sequence[ChatMessage]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class EnginePool:
    def __init__(self, engines: Sequence[LLMEngine]) -> None:
        if not engines:
            raise ValueError("EnginePool needs at least one engine")
        self.engines = list(engines)
        self._last: list[list[ChatMessage]] = [[] for _ in self.engines]
        self._free: set[int] = set(range(len(self.engines)))
        self._changed = asyncio.Condition()

    async def _acquire(self, messages: Sequence[ChatMessage]) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._free))
            best = max(sorted(self._free),
                       key=lambda i: _shared_prefix(self._last[i], messages))
            self._free.discard(best)
            return best

    async def _release(self, index: int) -> None:
        async with self._changed:
            self._free.add(index)
            self._changed.notify()

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] | None = None
    ) -> AsyncGenerator[LLMDelta, None]:
        index = await self._acquire(messages)
        try:
            self._last[index] = list(messages)
            async with contextlib.aclosing(
                self.engines[index].stream(messages, tools=tools)
            ) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            await asyncio.shield(self._release(index))

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        for i, engine in enumerate(self.engines):  # one at a time: loading is all CPU anyway
            await engine.warmup(messages)
            self._last[i] = list(messages)

    async def aclose(self) -> None:
        await asyncio.gather(*(e.aclose() for e in self.engines))
