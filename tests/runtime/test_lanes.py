"""A lane's edge cases, where an interrupt or an idle close meets a message in flight: the lane
survives, and no message is stranded or handled out of order."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.runtime.test_sessions import LaterStage, frame
from voxbus.contracts.messages import AudioIn
from voxbus.runtime.lanes import Delivery, Lane
from voxbus.runtime.testing import MemoryInbound, StageRunner

pytestmark = pytest.mark.fast

REGION = "test"


async def test_a_second_interrupt_during_the_skip_does_not_end_the_lane() -> None:
    processed: list[int] = []
    skipped: list[int] = []
    skipping = asyncio.Event()
    let_skip_finish = asyncio.Event()

    async def process(d: Delivery) -> None:
        if d.msg.turn == 1:
            await asyncio.sleep(30)  # a reply being generated, until interrupted
        processed.append(d.msg.turn)

    async def skip(d: Delivery) -> None:
        skipped.append(d.msg.turn)
        skipping.set()
        await let_skip_finish.wait()  # the ack round trip of the skip

    lane = Lane("s", process=process, skip=skip, maxsize=8, on_exit=lambda _lane: None)
    lane.task = asyncio.create_task(lane.run())
    async with StageRunner(LaterStage(), region=REGION) as runner:

        def delivery(turn: int, seq: int) -> Delivery:
            msg = frame("s", seq, turn=turn)
            inbound = MemoryInbound(runner, msg, "s", ("AUDIO", seq))
            return Delivery(inbound=inbound, msg=msg, region=REGION)

        lane.queue.put_nowait(delivery(1, 1))
        await asyncio.sleep(0.05)
        lane.interrupt(1)
        await asyncio.wait_for(skipping.wait(), 2)
        lane.interrupt(1)  # the caller barged in again while the first one is skipped
        lane.interrupt(2)
        let_skip_finish.set()
        lane.queue.put_nowait(delivery(3, 2))
        await asyncio.wait_for(lane.drained(), 2)
    assert not lane.task.done(), "the lane ended"
    assert skipped == [1] and processed == [3]
    lane.task.cancel()
    await asyncio.gather(lane.task, return_exceptions=True)


async def test_a_lane_being_cancelled_still_stops_when_an_interrupt_came_first() -> None:
    """An interrupt's cancel and the runtime's own (a drain) in the same moment: the lane stops."""

    async def process(d: Delivery) -> None:
        await asyncio.sleep(30)

    async def skip(d: Delivery) -> None:
        return None

    lane = Lane("s", process=process, skip=skip, maxsize=8, on_exit=lambda _lane: None)
    lane.task = asyncio.create_task(lane.run())
    async with StageRunner(LaterStage(), region=REGION) as runner:
        msg = frame("s", 1, turn=1)
        lane.queue.put_nowait(Delivery(inbound=MemoryInbound(runner, msg, "s", ("AUDIO", 1)),
                                       msg=msg, region=REGION))
        await asyncio.sleep(0.05)
        lane.interrupt(1)
        lane.task.cancel()
        await asyncio.wait_for(asyncio.gather(lane.task, return_exceptions=True), 2)
    assert lane.task.cancelled()


async def test_a_message_arriving_as_the_idle_sweep_closes_the_session_is_handled() -> None:
    """The sweep decides a session is idle; before its close runs, the next frame is queued in
    the old lane. The close must see it and keep the session, not cancel the lane under it."""
    stage = LaterStage(delay_s=0.0, idle_s=0.2)
    async with StageRunner(stage, region=REGION) as runner:
        await runner.send(frame("s", 0))
        await runner.idle()
        await asyncio.sleep(0.05)
        lanes = runner.lanes
        lanes.sweep(time.monotonic() + 60)  # spawns the idle close; it has not run yet
        await runner.send(frame("s", 1))  # queued without a pause: the close runs after
        await runner.idle(timeout_s=5)
        await runner.send(frame("s", 2))
        await runner.idle(timeout_s=5)
    outcomes = [(o, m.seq) for o, m in runner.outcomes() if isinstance(m, AudioIn)]
    assert outcomes == [("ack", 0), ("ack", 1), ("ack", 2)], outcomes
    seen = [seqs for _s, _reason, seqs in stage.closed]
    assert sum(seen, []) == [0, 1, 2], "a frame was lost or handled out of order"
