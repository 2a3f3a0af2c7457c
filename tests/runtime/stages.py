"""Small stages for runtime tests (control flow only; real stages are tested with real models)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from voxbus.contracts.messages import AnyMessage, AudioIn, AudioOut, Interrupt, Message, ReplyText
from voxbus.contracts.subjects import Kind
from voxbus.runtime.stage import BadInput, Context, Retryable, StatelessStage


class PickyStage(StatelessStage):
    """Echoes audio; seq 13 is bad input, seq 66 raises a bug, seq 7 fails twice then works."""

    name = "picky"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)

    def __init__(self) -> None:
        self.attempts: dict[int, int] = {}

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        assert isinstance(msg, AudioIn)
        if msg.seq == 13:
            raise BadInput("unlucky", "seq 13 is not accepted")
        if msg.seq == 66:
            raise ZeroDivisionError("a bug")
        if msg.seq == 7:
            self.attempts[7] = self.attempts.get(7, 0) + 1
            if self.attempts[7] < 3:
                raise Retryable("backend busy")
        yield AudioOut(session=msg.session, turn=msg.turn, seq=msg.seq,
                       sample_rate_hz=msg.sample_rate_hz, pcm=msg.pcm)


class TickerStage(StatelessStage):
    """For each reply chunk, yields 100 audio frames 10 ms apart; interrupts stop it."""

    name = "ticker"
    inputs: tuple[Kind, ...] = (Kind.REPLY,)
    urgent: tuple[Kind, ...] = (Kind.INTERRUPT,)

    def __init__(self) -> None:
        self.interrupts: list[Interrupt] = []

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if isinstance(msg, Interrupt):
            self.interrupts.append(msg)
            return
        assert isinstance(msg, ReplyText)
        for i in range(100):
            await asyncio.sleep(0.01)
            yield AudioOut(session=msg.session, turn=msg.turn, seq=i, sample_rate_hz=24000,
                           pcm=b"\0\0" * 240, emitted_ns=time.time_ns())
