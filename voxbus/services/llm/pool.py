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
from typing import Protocol, runtime_checkable

import structlog

from voxbus.runtime.tasks import cancel_and_wait
from voxbus.services.llm.engine import ChatMessage, LLMDelta, LLMEngine, Sampling, ToolSpec

log = structlog.get_logger("voxbus.llm.pool")


def _shared_prefix(a: Sequence[ChatMessage], b: Sequence[ChatMessage]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@runtime_checkable
class Preloadable(Protocol):
    async def load(self) -> None: ...


@runtime_checkable
class Prewarmable(Protocol):
    async def prewarm(self, messages: Sequence[ChatMessage],
                      tools: Sequence[ToolSpec] | None = None) -> bool: ...


class EnginePool:
    def __init__(self, engines: Sequence[LLMEngine]) -> None:
        if not engines:
            raise ValueError("EnginePool needs at least one engine")
        self.engines = list(engines)
        self._last: list[list[ChatMessage]] = [[] for _ in self.engines]
        self._free: set[int] = set(range(len(self.engines)))
        self._changed = asyncio.Condition()
        self._warming: asyncio.Task[None] | None = None
        self._prewarming: dict[int, asyncio.Task[bool]] = {}
        self._prewarmable = all(isinstance(e, Prewarmable) for e in self.engines)
        self._used = [0] * len(self.engines)  # when each was last taken (a count)
        self._uses = 0

    async def _acquire(self, messages: Sequence[ChatMessage]) -> int:
        async with self._changed:
            if not self._free:  # a turn never waits for a conversation's prewarm
                for task in self._prewarming.values():
                    task.cancel()
            await self._changed.wait_for(lambda: bool(self._free))
            return self._take(messages)

    def _take(self, messages: Sequence[ChatMessage]) -> int:
        """The free engine whose cache shares the most with ``messages``; of equals, the one
        used longest ago (its conversation is the least likely to come back)."""
        best = max(sorted(self._free), key=lambda i: (_shared_prefix(self._last[i], messages),
                                                      -self._used[i]))
        self._free.discard(best)
        self._uses += 1
        self._used[best] = self._uses
        return best

    async def _release(self, index: int) -> None:
        async with self._changed:
            self._free.add(index)
            self._changed.notify()

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        index = await self._acquire(messages)
        try:
            self._last[index] = list(messages)
            extra = {"sampling": sampling} if sampling is not None else {}
            async with contextlib.aclosing(
                self.engines[index].stream(messages, tools=tools, **extra)
            ) as deltas:
                async for delta in deltas:
                    yield delta
        finally:
            await asyncio.shield(self._release(index))

    async def prewarm(self, messages: Sequence[ChatMessage],
                      tools: Sequence[ToolSpec] | None = None) -> bool:
        """Evaluate a conversation's next prompt prefix on a free engine, which its next turn
        then takes (the longest shared prefix); nothing when every engine is busy. A turn that
        finds no free engine stops it. True when it ran to the end."""
        if not self._prewarmable:
            return False
        async with self._changed:
            if not self._free:
                return False
            index = self._take(messages)
        engine = self.engines[index]
        assert isinstance(engine, Prewarmable)
        try:
            self._last[index] = list(messages)
            task = asyncio.create_task(engine.prewarm(messages, tools), name="llm-prewarm")
            self._prewarming[index] = task
            try:
                return await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we were cancelled, not preempted by a turn
                return False
        finally:
            self._prewarming.pop(index, None)
            await asyncio.shield(self._release(index))

    async def prewarm_each(self, messages: Sequence[ChatMessage],
                           tools: Sequence[ToolSpec] | None = None) -> int:
        """Read ``messages`` (an agent's prompt) into every free engine's cache, one after the
        other; a turn that finds no free engine stops it (as ``prewarm``). How many completed."""
        done = 0
        for index, engine in enumerate(self.engines):
            if not isinstance(engine, Prewarmable):
                continue
            async with self._changed:
                if index not in self._free:
                    continue
                self._free.discard(index)
            try:
                self._last[index] = list(messages)
                task = asyncio.create_task(engine.prewarm(messages, tools), name="llm-prewarm")
                self._prewarming[index] = task
                try:
                    done += bool(await task)
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise
            finally:
                self._prewarming.pop(index, None)
                await self._release(index)
        return done

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        """The first engine now; the others in the background, each taking streams once warm:
        a worker starting cold answers its first turn without waiting for the second copy.
        Every model is loaded now though (quick): llama.cpp sends the whole process's stderr to
        /dev/null while it loads one, which must not happen under a running worker's logs."""
        for engine in self.engines[1:]:
            if isinstance(engine, Preloadable):
                await engine.load()
        await self.engines[0].warmup(messages)
        self._last[0] = list(messages)
        rest = list(range(1, len(self.engines)))
        if rest:
            async with self._changed:
                self._free -= set(rest)
            self._warming = asyncio.create_task(self._warm(rest, messages),
                                                name="llm-pool-warmup")

    async def _warm(self, indices: list[int], messages: Sequence[ChatMessage]) -> None:
        for i in indices:  # one at a time: loading is all CPU anyway
            try:
                await self.engines[i].warmup(messages)
            except Exception as e:  # noqa: BLE001 - the pool goes on with fewer engines
                log.error("llm_engine_warmup_failed", engine=i, error=repr(e))
                continue
            self._last[i] = list(messages)
            await self._release(i)
            log.info("llm_engine_ready", engine=i, engines=len(self.engines))

    async def aclose(self) -> None:
        await cancel_and_wait(self._warming)
        await asyncio.gather(*(e.aclose() for e in self.engines))
