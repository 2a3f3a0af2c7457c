"""A lane that falls behind for longer than ``ack_wait`` on a real nats-server: the messages
waiting for it are redelivered by JetStream, and the worker must still hand each one to the stage
exactly once, in order (a duplicated audio frame changes what the STT hears)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from tests.conftest import REGION
from voxbus.contracts.messages import AnyMessage, AudioIn, Message
from voxbus.contracts.subjects import Kind
from voxbus.runtime.bus import Bus
from voxbus.runtime.stage import Context
from voxbus.runtime.worker import Worker, WorkerOptions


class SlowStage:
    """Records every AudioIn it is given; each one takes ``delay_s``."""

    name = "slow"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)
    urgent: tuple[Kind, ...] = ()

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.seen: list[int] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        assert isinstance(msg, AudioIn)
        self.seen.append(msg.seq)
        await asyncio.sleep(self.delay_s)
        return
        yield


async def test_a_stalled_lane_sees_each_message_once(bus: Bus) -> None:
    stage = SlowStage(delay_s=0.05)
    # A lane of 4: the pull callback waits for room, and what JetStream delivered meanwhile
    # waits in the client's buffer for much longer than ack_wait.
    worker = Worker(bus, stage, WorkerOptions(lane_queue=4, ack_wait_s=1.0, pull_batch=64))
    await worker.start()
    try:
        n = 80  # 4 s of work for one lane: everything after the first second waits > ack_wait
        for seq in range(n):
            await bus.publish(REGION, AudioIn(session="slowpoke", seq=seq, sample_rate_hz=16000,
                                              capture_ns=time.time_ns(), pcm=b"\0\0" * 160))
        deadline = time.monotonic() + 30
        while len(set(stage.seen)) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # room for late redeliveries to show up
    finally:
        await worker.stop()
    assert stage.seen == list(range(n)), "messages handled twice or out of order"
    assert worker.redeliveries_dropped > 0, "no redelivery happened: the test proved nothing"
