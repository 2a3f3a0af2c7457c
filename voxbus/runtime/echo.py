"""A pass-through stage: answers every audio frame with the same frame as agent audio. Used by the
bus benchmark, the runtime tests and the demo until the real stages run."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from voxbus.contracts.messages import AnyMessage, AudioIn, AudioOut, Message
from voxbus.contracts.subjects import Kind
from voxbus.runtime.stage import Context, StatelessStage


class EchoStage(StatelessStage):
    name = "echo"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        if isinstance(msg, AudioIn):
            yield AudioOut(
                session=msg.session, turn=msg.turn, seq=msg.seq,
                sample_rate_hz=msg.sample_rate_hz, channels=msg.channels, pcm=msg.pcm,
                emitted_ns=time.time_ns(),
            )
