"""A partition's takeover barrier when its consumer is not there: a server back with an empty
store lost every consumer, and a worker can take a partition again before it made them again.
The barrier waits for the consumer (the partition's puller makes it) instead of ending, which
left the partition holding every message back for good (the LLM never answered the turn after
an empty store: tests/faults/test_outages.py)."""

from __future__ import annotations

import asyncio
import time

from nats.js import api as js_api
from nats.js.errors import NotFoundError

from tests.conftest import REGION
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioIn, AudioOut
from voxbus.contracts.subjects import Kind, partition_filter, partition_of
from voxbus.runtime.bus import Bus
from voxbus.runtime.echo import EchoStage
from voxbus.runtime.takeover import Barrier
from voxbus.runtime.testing import wait_until
from voxbus.runtime.worker import Worker


async def _nothing(_msg: object) -> None:
    return None


async def test_the_barrier_waits_for_a_consumer_made_again(bus: Bus) -> None:
    stream = streams.stream_of(REGION, Kind.AUDIO_IN)
    barrier = Barrier(bus.js, stream=stream, consumer="later-p0", handler=_nothing, check_s=0.02)
    task = asyncio.create_task(barrier.run())
    try:
        await asyncio.sleep(0.2)  # several checks found no consumer
        assert not task.done(), task.exception() if task.done() else None
        assert not barrier.open
        await bus.js.add_consumer(stream, js_api.ConsumerConfig(
            durable_name="later-p0", ack_policy=js_api.AckPolicy.EXPLICIT,
            filter_subjects=[partition_filter(REGION, 0, Kind.AUDIO_IN)]))
        await asyncio.wait_for(task, 5)
        assert barrier.open
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_partition_taken_before_its_consumer_is_made_again_delivers(bus: Bus) -> None:
    """The partition starts (its barrier checks at once) while its consumer is gone; its
    puller's first request finds none and makes it again; the session is answered."""
    w = Worker(bus, EchoStage())
    await w.start()
    try:
        session = "s-after-empty-store"
        p = partition_of(session, bus.partitions)
        assert (REGION, p) in w.partitions
        got: asyncio.Queue[AudioOut] = asyncio.Queue()

        async def on_out(m):  # type: ignore[no-untyped-def]
            msg = await bus.read(m.subject, m.data)
            if isinstance(msg, AudioOut):
                await got.put(msg)

        await bus.nc.subscribe(f"voxbus.{REGION}.{session}.{Kind.AUDIO_OUT.value}", cb=on_out)
        await w._fenced(REGION, p)  # the partition dropped (its lease lost with the store)
        stream = streams.stream_of(REGION, Kind.AUDIO_IN)
        await bus.js.delete_consumer(stream, f"echo-p{p}")
        await w._acquired(REGION, p)  # and taken again before the consumer is back

        async def made_again() -> bool:
            try:
                await bus.js.consumer_info(stream, f"echo-p{p}")
            except NotFoundError:
                return False
            return True

        await wait_until(made_again, timeout_s=10, step_s=0.05, what="the consumer made again")
        await bus.publish(REGION, AudioIn(session=session, seq=0, sample_rate_hz=16000,
                                          capture_ns=time.time_ns(), pcm=b"\0\0" * 320))
        out = await asyncio.wait_for(got.get(), 10)
        assert out.session == session
    finally:
        await w.stop()
