"""Sessions that cannot take a message now (a full lane, no place in the worker yet) on a real
nats-server: their messages go back to JetStream and come again, each is handled exactly once and
in order, and the other sessions of the same partition never wait for them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from tests.conftest import REGION
from voxbus.contracts.messages import AnyMessage, AudioIn, ErrorEvent, Message
from voxbus.contracts.subjects import Kind
from voxbus.runtime.bus import Bus
from voxbus.runtime.stage import Context, SessionPolicy, StatelessStage
from voxbus.runtime.testing import Tap, wait_until
from voxbus.runtime.worker import Worker, WorkerOptions


class SlowStage(StatelessStage):
    """Records every AudioIn it is given (with when); a message of ``slow`` takes ``delay_s``."""

    name = "slow"
    inputs: tuple[Kind, ...] = (Kind.AUDIO_IN,)

    def __init__(self, delay_s: float, policy: SessionPolicy | None = None) -> None:
        self.delay_s = delay_s
        self.policy = policy or SessionPolicy()
        self.seen: dict[str, list[int]] = {}
        self.at: dict[str, list[float]] = {}

    async def handle(self, msg: AnyMessage, ctx: Context) -> AsyncIterator[Message]:
        assert isinstance(msg, AudioIn)
        self.seen.setdefault(msg.session, []).append(msg.seq)
        self.at.setdefault(msg.session, []).append(time.monotonic())
        if msg.session == "slow":
            await asyncio.sleep(self.delay_s)
        return
        yield


async def one_partition(nats_url: str) -> Bus:
    """A bus whose sessions all share one partition: neighbours in the strictest sense."""
    bus = await Bus.connect(nats_url, regions=[REGION], partitions=1, name="test-one-partition")
    await bus.provision()
    return bus


async def publish(bus: Bus, session: str, seqs: range) -> None:
    for seq in seqs:
        await bus.publish(REGION, AudioIn(session=session, seq=seq, sample_rate_hz=16000,
                                          capture_ns=time.time_ns(), pcm=b"\0\0" * 160))


async def test_a_full_lane_never_holds_up_its_neighbours(nats_url: str) -> None:
    bus = await one_partition(nats_url)
    stage = SlowStage(delay_s=0.05)
    # A lane of 4: what does not fit goes back to JetStream, longer than ack_wait in all.
    worker = Worker(bus, stage, WorkerOptions(lane_queue=4, ack_wait_s=1.0, pull_batch=64))
    await worker.start()
    try:
        n = 80  # 4 s of work for the slow session
        await publish(bus, "slow", range(n))
        t0 = time.monotonic()
        await publish(bus, "quick", range(5))
        await wait_until(lambda: len(stage.seen.get("quick", [])) == 5, timeout_s=30)
        quick_s = time.monotonic() - t0
        await wait_until(lambda: len(set(stage.seen.get("slow", []))) >= n, timeout_s=30,
                         what="every slow message handled")
        await asyncio.sleep(1.5)  # room for late copies to show up
    finally:
        await worker.stop()
        await bus.close()
    assert stage.seen["slow"] == list(range(n)), "handled twice or out of order"
    assert stage.seen["quick"] == list(range(5))
    assert quick_s < 1.5, f"the neighbour waited {quick_s:.1f} s behind the full lane"
    assert worker.stats.deferred > 0, "the lane never filled: the test proved nothing"


async def test_a_session_waiting_for_a_place_keeps_its_order_and_blocks_nobody(
    nats_url: str,
) -> None:
    bus = await one_partition(nats_url)
    stage = SlowStage(0.0, SessionPolicy(max_sessions=1, admit_timeout_s=30, idle_close_s=1.0))
    worker = Worker(bus, stage)
    await worker.start()
    try:
        await publish(bus, "first", range(10))  # takes the one place, then idles out after 1 s
        await wait_until(lambda: len(stage.seen.get("first", [])) == 10, timeout_s=30)
        t0 = time.monotonic()
        await publish(bus, "second", range(40))  # waits for the place, messages come back
        await wait_until(lambda: len(stage.seen.get("second", [])) == 40, timeout_s=30,
                         what="the second session handled")
        admitted_after = stage.at["second"][0] - t0
    finally:
        await worker.stop()
        await bus.close()
    assert stage.seen["second"] == list(range(40))
    assert 0.5 < admitted_after < 5, admitted_after
    assert worker.stats.deferred > 0 and worker.stats.refused == 0


async def test_a_session_without_a_place_is_refused_with_one_error_event(nats_url: str) -> None:
    bus = await one_partition(nats_url)
    tap = await Tap.on_bus(bus, REGION)
    stage = SlowStage(0.0, SessionPolicy(max_sessions=1, admit_timeout_s=0.3, idle_close_s=30))
    worker = Worker(bus, stage)
    await worker.start()
    try:
        await publish(bus, "holder", range(3))
        await wait_until(lambda: len(stage.seen.get("holder", [])) == 3, timeout_s=30)
        await publish(bus, "late", range(3))
        await asyncio.sleep(0.6)
        await publish(bus, "late", range(3, 6))
        await wait_until(lambda: worker.stats.refused >= 6, what="six refusals")
    finally:
        await worker.stop()
        await tap.close()
        await bus.close()
    assert "late" not in stage.seen
    errors = tap.of(ErrorEvent, "late")
    assert [(e.code, e.stage) for e in errors] == [("slow_busy", "slow")]
