"""Barge-in through the runtime: in-flight work of the interrupted turn stops at once and no
stale output is published; the next turn flows."""

from __future__ import annotations

import asyncio
import time

from tests.conftest import REGION
from tests.runtime.stages import TickerStage
from voxbus.contracts.messages import AudioOut, Interrupt, ReplyText
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import wait_until
from voxbus.runtime.worker import Worker


async def test_interrupt_stops_in_flight_turn(bus: Bus) -> None:
    stage = TickerStage()
    worker = Worker(bus, stage)
    await worker.start()
    outs: list[tuple[int, float]] = []

    async def on(m) -> None:  # type: ignore[no-untyped-def]
        msg = await bus.read(m.subject, m.data)
        assert isinstance(msg, AudioOut)
        outs.append((msg.turn, time.monotonic()))

    await bus.nc.subscribe(f"voxbus.{REGION}.s1.audio.out", cb=on)
    try:
        for chunk in range(3):  # three queued chunks of turn 1
            await bus.publish(REGION, ReplyText(session="s1", turn=1, seq=chunk, text="hello",
                                                char_start=0, char_end=5))
        while len(outs) < 10:
            await asyncio.sleep(0.005)
        t_interrupt = time.monotonic()
        await bus.publish(REGION, Interrupt(session="s1", turn=1, at_ns=time.time_ns()))
        await asyncio.sleep(0.3)
        turn1 = [t for turn, t in outs if turn == 1]
        assert len(turn1) < 100, "the first chunk was not cut short"
        assert max(turn1) - t_interrupt < 0.05, "output of turn 1 after the interrupt"
        assert len(stage.interrupts) == 1

        await bus.publish(REGION, ReplyText(session="s1", turn=2, seq=0, text="next",
                                            char_start=0, char_end=4))
        await wait_until(lambda: sum(1 for turn, _ in outs if turn == 2) >= 100, timeout_s=5)
        assert sum(1 for turn, _ in outs if turn == 2) == 100
        assert sum(1 for turn, _ in outs if turn == 1) == len(turn1), "queued turn-1 chunks ran"
    finally:
        await worker.stop()


async def test_the_interrupt_watermark_survives_a_takeover(bus: Bus) -> None:
    """A replica heard the interrupt of turn 1; the replica after it (a takeover) drops a late
    message of turn 1 too: the watermark is in the session's state, not only in memory."""
    outs: list[int] = []

    async def on(m) -> None:  # type: ignore[no-untyped-def]
        outs.append((await bus.read(m.subject, m.data)).turn)

    await bus.nc.subscribe(f"voxbus.{REGION}.s2.audio.out", cb=on)
    first = Worker(bus, TickerStage())
    await first.start()
    await bus.publish(REGION, Interrupt(session="s2", turn=1, at_ns=time.time_ns()))
    await asyncio.sleep(0.5)
    await first.stop()
    second = Worker(bus, TickerStage())
    await second.start()
    try:
        await bus.publish(REGION, ReplyText(session="s2", turn=1, seq=0, text="late",
                                            char_start=0, char_end=4))
        await bus.publish(REGION, ReplyText(session="s2", turn=2, seq=0, text="next",
                                            char_start=0, char_end=4))
        await wait_until(lambda: outs.count(2) >= 100, timeout_s=5)
        assert outs.count(2) == 100
        assert outs.count(1) == 0, "the new owner spoke an interrupted turn"
    finally:
        await second.stop()
