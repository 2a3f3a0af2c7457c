"""Bad input gets a clear error event and loses nothing: on a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import msgspec
import pytest

from tests.conftest import REGION
from tests.runtime.stages import PickyStage
from voxbus.contracts import encode, streams
from voxbus.contracts.messages import AudioIn, AudioOut, ErrorEvent
from voxbus.contracts.subjects import Kind, subject
from voxbus.runtime.bus import Bus, UnknownRegion
from voxbus.runtime.worker import Worker


def frame(session: str, seq: int, pcm: bytes = b"\0\0" * 320) -> AudioIn:
    return AudioIn(session=session, seq=seq, sample_rate_hz=16000, capture_ns=time.time_ns(),
                   pcm=pcm)


class Tap:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.errors: asyncio.Queue[ErrorEvent] = asyncio.Queue()
        self.outs: list[AudioOut] = []

    async def on(self, m) -> None:  # type: ignore[no-untyped-def]
        msg = await self.bus.read(m.subject, m.data)
        if isinstance(msg, ErrorEvent):
            await self.errors.put(msg)
        elif isinstance(msg, AudioOut):
            self.outs.append(msg)

    async def error(self) -> ErrorEvent:
        return await asyncio.wait_for(self.errors.get(), 5)

    async def outputs(self, n: int) -> list[AudioOut]:
        deadline = time.monotonic() + 5
        while len(self.outs) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self.outs


@pytest.fixture
async def running(bus: Bus) -> AsyncIterator[tuple[Bus, Tap]]:
    tap = Tap(bus)
    await bus.nc.subscribe("voxbus.*.*.ctl.error", cb=tap.on)
    await bus.nc.subscribe(f"voxbus.{REGION}.*.audio.out", cb=tap.on)
    worker = Worker(bus, PickyStage())
    await worker.start()
    try:
        yield bus, tap
    finally:
        await worker.stop()


async def test_malformed_payload(running: tuple[Bus, Tap]) -> None:
    bus, tap = running
    await bus.publish(REGION, frame("s1", 0))
    await bus.js.publish(subject(REGION, "s1", Kind.AUDIO_IN), b"\xc1 not msgpack")
    await bus.publish(REGION, frame("s1", 1))
    await bus.publish(REGION, frame("s2", 0))
    err = await tap.error()
    assert (err.session, err.code, err.stage) == ("s1", "bad_message", "picky")
    assert err.subject.endswith("s1.audio.in")
    outs = await tap.outputs(3)
    assert sorted((o.session, o.seq) for o in outs) == [("s1", 0), ("s1", 1), ("s2", 0)]


async def test_unknown_message_type(running: tuple[Bus, Tap]) -> None:
    bus, tap = running
    alien = msgspec.msgpack.encode({"type": "audio.in.v9", "session": "s1", "seq": 0})
    await bus.js.publish(subject(REGION, "s1", Kind.AUDIO_IN), alien)
    await bus.publish(REGION, frame("s1", 1))
    err = await tap.error()
    assert err.code == "bad_message" and "audio.in.v9" in err.message
    assert [(o.session, o.seq) for o in await tap.outputs(1)] == [("s1", 1)]


async def test_oversized_frame(running: tuple[Bus, Tap]) -> None:
    bus, tap = running
    huge = encode(frame("s1", 0, pcm=b"\0" * 100_000))
    await bus.js.publish(subject(REGION, "s1", Kind.AUDIO_IN), huge)
    await bus.publish(REGION, frame("s1", 1))
    err = await tap.error()
    assert err.code == "bad_message" and "length" in err.message and "pcm" in err.message
    assert [(o.session, o.seq) for o in await tap.outputs(1)] == [("s1", 1)]


async def test_message_on_another_sessions_subject(running: tuple[Bus, Tap]) -> None:
    bus, tap = running
    await bus.js.publish(subject(REGION, "s1", Kind.AUDIO_IN), encode(frame("s2", 0)))
    err = await tap.error()
    assert (err.session, err.code) == ("s1", "session_mismatch")


async def test_unknown_region(running: tuple[Bus, Tap]) -> None:
    bus, tap = running
    with pytest.raises(UnknownRegion):
        await bus.publish("mars", frame("s1", 0))
    err = await tap.error()
    assert (err.session, err.code) == ("s1", "unknown_region")
    await bus.publish(REGION, frame("s1", 1))
    assert [(o.session, o.seq) for o in await tap.outputs(1)] == [("s1", 1)]


async def test_stage_errors_and_retries(running: tuple[Bus, Tap]) -> None:
    bus, tap = running
    for seq in (5, 13, 66, 7, 8):
        await bus.publish(REGION, frame("s3", seq))
    codes = {(await tap.error()).code, (await tap.error()).code}
    assert codes == {"unlucky", "internal"}
    outs = await tap.outputs(3)
    assert [o.seq for o in outs] == [5, 7, 8]  # 7 succeeded on its third attempt, in order


async def test_a_message_of_the_wrong_kind_for_its_subject(running: tuple[Bus, Tap]) -> None:
    """An agent audio frame sent on the caller's audio subject is not the caller's audio."""
    bus, tap = running
    alien = AudioOut(session="k1", turn=1, seq=0, sample_rate_hz=24000, pcm=b"\0\0" * 10)
    await bus.js.publish(subject(REGION, "k1", Kind.AUDIO_IN), encode(alien))
    await bus.publish(REGION, frame("k1", 1))
    err = await tap.error()
    assert (err.session, err.code) == ("k1", "wrong_kind"), err
    assert [(o.session, o.seq) for o in await tap.outputs(1)] == [("k1", 1)]


async def test_a_flood_of_bad_input_makes_a_few_error_events(running: tuple[Bus, Tap]) -> None:
    """Each rejected message used to become an error event kept for a day. Past a small burst
    per session they are counted, not stored; another session still gets its own."""
    bus, tap = running
    for _ in range(200):
        await bus.js.publish(subject(REGION, "f1", Kind.AUDIO_IN), b"\xc1 junk")
    await bus.publish(REGION, frame("f1", 1))
    await bus.js.publish(subject(REGION, "f2", Kind.AUDIO_IN), b"\xc1 junk")
    assert [(o.session, o.seq) for o in await tap.outputs(1)] == [("f1", 1)]
    await asyncio.sleep(0.5)
    sessions = [tap.errors.get_nowait().session for _ in range(tap.errors.qsize())]
    assert 1 <= sessions.count("f1") <= 10, sessions.count("f1")
    assert sessions.count("f2") == 1


async def test_stored_error_events_are_capped_per_session_and_per_region(nats_url: str) -> None:
    """Rate limits bound what one process publishes; the errors stream bounds what is stored,
    whoever publishes (many processes, or a hostile one): the oldest events go first."""
    region = "capped"
    bus = await Bus.connect(nats_url, regions=[region], partitions=4, name="test-caps")
    try:
        await bus.provision(streams.Retention(errors_max=40, errors_per_session=5))
        for i in range(30):  # one session's flood
            await bus.publish(region, ErrorEvent(session="loud", turn=0, code="x", message=str(i),
                                                 stage="test"))
        for i in range(100):  # many sessions
            await bus.publish(region, ErrorEvent(session=f"s{i}", turn=0, code="x",
                                                 message="m", stage="test"))
        errors = streams.errors_stream(region)
        info = await bus.js.stream_info(errors, subjects_filter=">")
        assert info.state.messages == 40
        assert all(n <= 5 for n in (info.state.subjects or {}).values())
        ctl = await bus.js.stream_info(streams.control_stream(region))
        assert ctl.state.messages == 0, "error events are kept apart from the control events"
    finally:
        await bus.close()
