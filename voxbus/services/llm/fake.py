"""A scripted LLM for control-flow tests: given tokens (and tool calls) with given delays."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from voxbus.services.llm.engine import (
    ChatMessage,
    FinishDelta,
    FinishReason,
    LLMDelta,
    Sampling,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
)


@dataclass(frozen=True, slots=True)
class FakeTurn:
    """One scripted reply: tokens from ``first_token_delay_s``, then every ``token_delay_s``."""

    tokens: Sequence[str] = ()
    tool_calls: Sequence[ToolCallDelta] = ()
    first_token_delay_s: float = 0.0
    token_delay_s: float = 0.0
    finish: FinishReason | None = None  # default: "tool_calls" if any, else "stop"

    @classmethod
    def words(
        cls, text: str, *, first_token_delay_s: float = 0.0, token_delay_s: float = 0.0
    ) -> FakeTurn:
        """Split ``text`` into word tokens the way a tokenizer does (" word" pieces)."""
        words = text.split(" ")
        return cls(
            tokens=[words[0], *(" " + w for w in words[1:])],
            first_token_delay_s=first_token_delay_s,
            token_delay_s=token_delay_s,
        )


class FakeLLM:
    """Plays ``turns`` in order, one per ``stream()`` call; the last turn repeats.

    Records what it was asked (``calls``) and how many streams were cancelled early.
    """

    def __init__(self, turns: Sequence[FakeTurn]) -> None:
        if not turns:
            raise ValueError("FakeLLM needs at least one turn")
        self._turns = list(turns)
        self._next = 0
        self.calls: list[tuple[list[ChatMessage], list[ToolSpec] | None]] = []
        self.cancelled = 0
        self.warmed_up = False
        self.closed = False

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] | None = None,
        sampling: Sampling | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        turn = self._turns[min(self._next, len(self._turns) - 1)]
        self._next += 1
        self.calls.append((list(messages), list(tools) if tools is not None else None))
        finished = False
        try:
            for index, token in enumerate(turn.tokens):
                await asyncio.sleep(turn.first_token_delay_s if index == 0 else turn.token_delay_s)
                yield TextDelta(token)
            if not turn.tokens and turn.first_token_delay_s:
                await asyncio.sleep(turn.first_token_delay_s)
            for call in turn.tool_calls:
                yield call
            finished = True
            yield FinishDelta(turn.finish or ("tool_calls" if turn.tool_calls else "stop"))
        finally:
            if not finished:
                self.cancelled += 1

    async def warmup(self, messages: Sequence[ChatMessage] = ()) -> None:
        self.warmed_up = True

    async def aclose(self) -> None:
        self.closed = True
