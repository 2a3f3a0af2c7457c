"""Two real STT replicas (``python -m voxbus.services.stt``: Whisper tiny.en, Silero VAD) on a
real nats-server; a caller speaks a committed sentence in 20 ms frames at real time and goes on
sending silence, as the bridge does. The replica holding the caller's session is killed (-9)
one second into the speech, or just after it (or not at all: the baseline wait). The survivor
replays the frames that were never acked and closes the turn: one final transcript and one end
of turn, with the whole sentence."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.stages import REGION, owner_pid, report, stored, two_replicas
from tests.stt.conftest import fixture_named
from tests.stt.test_stage import Feed, pcm_of
from voxbus.contracts import streams
from voxbus.contracts.messages import EndOfTurn, Transcript, ends_turn
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap
from voxbus.services.stt.normalize import word_errors

pytestmark = pytest.mark.model


@pytest.fixture
async def stt_pair(tmp_path: Path) -> AsyncIterator[tuple[Bus, list[subprocess.Popen[bytes]]]]:
    async with two_replicas("stt", tmp_path, env={"STT_CPU_THREADS": "1"}) as pair:
        yield pair


@pytest.mark.parametrize("kill_at", ["one_second_in", "end_of_speech", "never"])
async def test_a_killed_stt_replica_loses_no_turn(
    stt_pair: tuple[Bus, list[subprocess.Popen[bytes]]], kill_at: str
) -> None:
    bus, procs = stt_pair
    fixture = fixture_named("jacket")
    session = f"kill-{kill_at.replace('_', '-')}"
    tap = await Tap.on_bus(bus, REGION, f"{session}.stt.transcript", f"{session}.ctl.>")
    feed = Feed.on(bus, session, speed=1.0, region=REGION)
    pcm = pcm_of(fixture)
    bytes_per_ms = 32
    cut_ms = fixture.speech_start_ms + 1000 if kill_at == "one_second_in" else \
        fixture.speech_end_ms + 40
    feed_started = time.monotonic()
    await feed.play(pcm[: cut_ms * bytes_per_ms])
    if kill_at != "never":  # "never": the same sentence without a kill, the baseline
        os.kill(await owner_pid(bus, "stt", session), signal.SIGKILL)
    killed = time.monotonic()
    await feed.play(pcm[cut_ms * bytes_per_ms:])
    await feed.play(b"\0\0" * 16_000 * 6)  # the caller's line stays open: silence
    await tap.until(lambda t: len(t.of(EndOfTurn, session)) >= 1, timeout_s=20)
    await asyncio.sleep(1.0)  # room for a duplicate to show up
    ends = tap.of(EndOfTurn, session)
    finals = [t for t in tap.of(Transcript, session) if t.is_final]
    at = next(a for a, m in tap.got if ends_turn(m))
    # Core NATS (this tap) sees a copy the stream drops by message id; the stream holds one.
    stored = await _stored(bus, session)
    assert stored.count("ctl.turn.end") == 1, stored
    assert stored.count("final") == 1, stored
    assert len({e.turn for e in ends}) == 1 and len({f.turn for f in finals}) == 1
    assert word_errors(fixture.text, ends[0].transcript) <= 1, (fixture.text, ends[0].transcript)
    # What the caller waits for: the end of turn, measured from the end of the speech (the
    # end-of-turn silence and the final decode are in it even without a kill).
    speech_end = feed_started + fixture.speech_end_ms / 1000
    scenario = "stt not killed (baseline)" if kill_at == "never" else \
        f"stt killed {kill_at.replace('_', ' ')}"
    report(scenario, gap_s=at - speech_end,
           turns_lost=0, duplicates=stored.count("final") - 1,
           since_kill_s=round(at - killed, 3), transcript=ends[0].transcript)


async def _stored(bus: Bus, session: str) -> list[str]:
    """The text and control messages the streams hold for ``session``: one tag per message."""
    tags: list[str] = []
    for stream in (streams.text_stream(REGION), streams.control_stream(REGION)):
        for msg in await stored(bus, session, stream):
            if isinstance(msg, Transcript):
                tags.append("final" if msg.is_final else "partial")
            elif isinstance(msg, EndOfTurn):
                tags.append("ctl.turn.guess" if msg.speculative else "ctl.turn.end")
            else:
                tags.append(type(msg).__name__)
    return tags
