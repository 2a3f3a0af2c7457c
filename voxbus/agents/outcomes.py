"""Tool call outcomes in the state bucket (``<session>.tool.<call_id>``): the tool worker keeps
one before it acks the call; the LLM stage waits for it."""

from __future__ import annotations

import asyncio
import time

from nats.js.errors import NotFoundError

from voxbus.contracts.agents import ToolOutcome, decode_outcome, encode, tool_key
from voxbus.runtime.ports import KeyValueStore

#: Polls of a waited outcome: soon at first (a fast tool answers in milliseconds), then less.
_POLL_S = (0.01, 0.02, 0.03, 0.05)
_POLL_MAX_S = 0.08


class ToolOutcomes:
    def __init__(self, kv: KeyValueStore) -> None:
        self._kv = kv

    async def get(self, session: str, call_id: str) -> ToolOutcome | None:
        try:
            entry = await self._kv.get(tool_key(session, call_id))
        except NotFoundError:  # not kept yet (or erased)
            return None
        return decode_outcome(entry.value) if entry.value else None

    async def put(self, session: str, outcome: ToolOutcome) -> None:
        await self._kv.put(tool_key(session, outcome.call_id), encode(outcome))

    async def wait(self, session: str, call_id: str, timeout_s: float) -> ToolOutcome | None:
        """The outcome once it is kept; None after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        polls = 0
        while True:
            outcome = await self.get(session, call_id)
            if outcome is not None:
                return outcome
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            pause = _POLL_S[polls] if polls < len(_POLL_S) else _POLL_MAX_S
            polls += 1
            await asyncio.sleep(min(pause, left))
