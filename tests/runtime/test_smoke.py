from __future__ import annotations

import asyncio
import time

from tests.conftest import REGION
from voxbus.contracts.messages import AudioIn, AudioOut
from voxbus.contracts.subjects import Kind, subject
from voxbus.runtime.bus import Bus
from voxbus.runtime.echo import EchoStage
from voxbus.runtime.worker import Worker


async def test_echo_roundtrip(bus: Bus) -> None:
    w = Worker(bus, EchoStage())
    await w.start()
    got: asyncio.Queue[AudioOut] = asyncio.Queue()

    async def cb(m):  # type: ignore[no-untyped-def]
        msg = await bus.read(m.subject, m.data)
        assert isinstance(msg, AudioOut)
        await got.put(msg)

    await bus.nc.subscribe(f"voxbus.{REGION}.*.{Kind.AUDIO_OUT.value}", cb=cb)
    for i in range(5):
        await bus.publish(REGION, AudioIn(session=f"s{i}", seq=i, sample_rate_hz=16000,
                                          capture_ns=time.time_ns(), pcm=b"\0\0" * 320))
    outs = [await asyncio.wait_for(got.get(), 5) for _ in range(5)]
    assert sorted(o.session for o in outs) == [f"s{i}" for i in range(5)]
    await w.stop()
    assert subject(REGION, "s1", Kind.AUDIO_IN).endswith("s1.audio.in")
