"""Two real TTS replicas (``python -m voxbus.services.tts``: Kokoro) on a real nats-server. A
reply is published as the LLM does (text deltas, then its end); the replica speaking it is killed
(-9) once its first frames are out, or before them. The survivor speaks the reply again with the
same frame numbers: the stream keeps one copy of each frame, and a listener that drops a frame
number it already has (as the bridge does) hears every frame once, in order, to the last one."""

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
from voxbus.contracts import streams
from voxbus.contracts.messages import AudioOut, ReplyEnd, ReplyText
from voxbus.runtime.bus import Bus
from voxbus.runtime.testing import Tap

pytestmark = pytest.mark.model

REPLY = ("Sure, I can help with that. Our store opens at nine in the morning, and we close "
         "at six in the evening on weekdays.")


@pytest.fixture
async def tts_pair(tmp_path: Path) -> AsyncIterator[tuple[Bus, list[subprocess.Popen[bytes]]]]:
    # Kokoro: its first unit takes about 0.4 s, the window a kill "before its first audio" needs
    # (Piper's, the default voice, is out in about 0.05 s)
    async with two_replicas("tts", tmp_path, env={"TTS_ENGINE": "kokoro"}) as pair:
        yield pair


def heard_gap(frames: list[tuple[float, AudioOut]]) -> float:
    """The longest silence a listener playing frames as they arrive hears inside the reply."""
    play_end, gap = 0.0, 0.0
    for at, f in frames:
        if play_end:
            gap = max(gap, at - play_end)
        play_end = max(play_end, at) + len(f.pcm) / 2 / f.sample_rate_hz
    return gap


@pytest.mark.parametrize("kill_at", ["mid_reply", "before_its_first_audio"])
async def test_a_killed_tts_replica_repeats_no_word(
    tts_pair: tuple[Bus, list[subprocess.Popen[bytes]]], kill_at: str,
) -> None:
    bus, _procs = tts_pair
    session = f"tts-kill-{kill_at.replace('_', '-')}"
    tap = await Tap.on_bus(bus, REGION, f"{session}.audio.out")
    words = REPLY.split(" ")
    pos = 0
    for seq, word in enumerate(words):  # one delta per word, as tokens come
        piece = word if seq == 0 else " " + word
        await bus.publish(REGION, ReplyText(session=session, turn=1, seq=seq, text=piece,
                                            char_start=pos, char_end=pos + len(piece)))
        pos += len(piece)
    await bus.publish(REGION, ReplyEnd(session=session, turn=1, text=REPLY))
    if kill_at == "mid_reply":
        await tap.until(lambda t: len(t.of(AudioOut, session)) >= 10, timeout_s=60)
    else:  # the reply taken, its first unit being synthesized
        await asyncio.sleep(0.1)
        assert not tap.of(AudioOut, session)
    os.kill(await owner_pid(bus, "tts", session), signal.SIGKILL)
    killed = time.monotonic()
    await tap.until(lambda t: any(f.last for f in t.of(AudioOut, session)), timeout_s=60)
    await asyncio.sleep(1.0)

    played: list[tuple[float, AudioOut]] = []
    next_seq, repeated = 0, 0
    for at, f in tap.timed(AudioOut):
        if f.seq < next_seq:
            repeated += 1
            continue
        next_seq = f.seq + 1
        played.append((at, f))
    seqs = [f.seq for _, f in played]
    assert seqs == list(range(len(seqs))), "a frame was lost"
    assert played[-1][1].last and sum(f.last for _, f in played) == 1
    assert played[-1][1].text_end == len(REPLY)
    kept = await stored(bus, session, streams.audio_stream(REGION))
    kept_seqs = [m.seq for m in kept if isinstance(m, AudioOut)]
    assert sorted(kept_seqs) == seqs, "the stream holds a frame twice (or lost one)"
    # mid-reply: the longest silence inside the reply; before it: the wait for its first frame
    gap = heard_gap(played) if kill_at == "mid_reply" else played[0][0] - killed
    report(f"tts killed {kill_at.replace('_', ' ').replace('mid reply', 'mid-reply')}", gap_s=gap,
           duplicates=len(kept_seqs) - len(seqs),
           frames=len(seqs), copies_dropped_by_listener=repeated,
           done_after_kill_s=round(played[-1][0] - killed, 3))
