"""Sessions that hold the STT's places without speaking, on a real nats-server with the real
Whisper and Silero VAD: sessions of one frame each fill every place, and a caller who then
speaks is still answered in seconds (the quiet sessions make room); a caller who hung up
(``SessionEnded``) gives the place back at once."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.conftest import REGION
from tests.stt.conftest import fixture_named
from tests.stt.test_stage import Feed, pcm_of, running
from voxbus.contracts.messages import EndOfTurn, SessionEnded
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import word_errors
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage

pytestmark = pytest.mark.model

FLOOD = int(os.environ.get("VOXBUS_TEST_FLOOD", "40"))  # one-frame sessions
SILENCE_FRAME = b"\0\0" * 320


async def _caller_turn(bus: Bus, session: str, tap: Tap) -> float:
    """Speak the jacket sentence in real time, then silence; seconds from the end of the speech
    to the end of turn."""
    fixture = fixture_named("jacket")
    feed = Feed.on(bus, session, speed=1.0)
    started = time.monotonic()
    await feed.play(pcm_of(fixture))
    deadline = time.monotonic() + 20
    while not tap.of(EndOfTurn, session):
        assert time.monotonic() < deadline, "the caller's turn never ended"
        await feed.frame(SILENCE_FRAME)
        await asyncio.sleep(0.02)
    end = tap.of(EndOfTurn, session)[0]
    assert word_errors(fixture.text, end.transcript) <= 1, end.transcript
    return time.monotonic() - (started + fixture.speech_end_ms / 1000)


async def test_quiet_sessions_make_room_for_a_caller(
    bus: Bus, whisper: WhisperEngine
) -> None:
    stage = SttStage(SttSettings(max_sessions=3, evict_idle_s=1.0), engine=whisper)
    async with running(bus, stage) as tap:
        for i in range(12):  # one frame each: every place taken, the rest waiting
            await Feed.on(bus, f"quiet-{i}").frame(SILENCE_FRAME)
        await asyncio.sleep(1.5)
        waited = await _caller_turn(bus, "speaker", tap)
    print(f"end of turn {waited:.2f} s after the speech with 12 quiet sessions and 3 places")
    assert waited < 4.0, f"the caller waited {waited:.2f} s behind sessions that never spoke"


async def test_a_flood_of_one_frame_sessions_does_not_delay_a_caller(
    bus: Bus, whisper: WhisperEngine
) -> None:
    """40 sessions of one frame each (a misbehaving client, or an attacker with room access),
    sent just before a caller speaks, against the default 32 places: the sessions that never
    spoke make room first, at once, so the caller's end of turn comes as soon as without them
    (before, they held every place until 2 s of quiet: 1.6-2.7 s later). Compared within one
    run: the same caller's turn without the flood first. Both come once the worker has a
    segmenter ready for every place (``stt_places_ready``, a few seconds after its start;
    before that, new sessions wait behind their making: 1.0 s later on a fresh clone's run)."""
    stage = SttStage(SttSettings(), engine=whisper)
    async with running(bus, stage) as tap:
        await asyncio.wait_for(stage.places_ready(), 30)
        alone = await _caller_turn(bus, "alone", tap)
        await asyncio.gather(*(Feed.on(bus, f"flood-{i}").frame(SILENCE_FRAME)
                               for i in range(FLOOD)))
        flooded = await _caller_turn(bus, "flooded", tap)
    print(f"end of turn {alone:.2f} s alone, {flooded:.2f} s behind {FLOOD} one-frame sessions "
          f"(+{flooded - alone:.2f} s)")
    assert flooded - alone < 0.6, f"the flood delayed the caller by {flooded - alone:.2f} s"


async def test_a_hung_up_session_gives_its_place_back(
    bus: Bus, whisper: WhisperEngine
) -> None:
    # (no eviction at all: the place comes back by the hang-up alone)
    stage = SttStage(SttSettings(max_sessions=1, evict_idle_s=0, evict_unheard_s=0),
                     engine=whisper)
    async with running(bus, stage) as tap:
        await Feed.on(bus, "gone").frame(SILENCE_FRAME)
        await asyncio.sleep(0.3)
        await bus.publish(REGION, SessionEnded(session="gone", reason="hangup",
                                               at_ns=time.time_ns()))
        waited = await _caller_turn(bus, "next", tap)
    assert waited < 3.0, f"the next caller waited {waited:.2f} s for a place held by no one"
