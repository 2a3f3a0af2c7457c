"""Telephone keys (DTMF) through the STT stage: keys pressed in a call come in order with the
caller's audio (``AudioIn.keys``) and become turns of their own, gathered until a pause in the
keys or ``#``, never inside a turn of speech. Real Silero VAD, scripted transcriber."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import REGION
from tests.stt.conftest import fixture_named
from tests.stt.test_stage import memory_feed, pcm_of
from voxbus.contracts.messages import AudioIn, EndOfTurn, UserStartedSpeaking
from voxbus.runtime.testing import StageRunner
from voxbus.services.llm.session import user_text
from voxbus.services.stt.engine import FakeTranscriber
from voxbus.services.stt.keys import Keypad
from voxbus.services.stt.stage import SttStage

SILENCE_20MS = bytes(640)


@pytest.mark.fast
def test_keys_wait_for_a_pause_or_hash_and_never_cut_into_speech() -> None:
    pad = Keypad(gap=100)
    pad.press("1", at=10)
    assert pad.due(50, speaking=False) is None
    pad.press("2", at=60)
    assert pad.due(150, speaking=False) is None  # 90 after the last key
    assert pad.due(200, speaking=True) is None  # the caller is talking: after their turn
    assert pad.due(200, speaking=False) == ("12", 10)
    assert pad.due(400, speaking=False) is None
    pad.press("4", at=500)
    pad.press("#", at=510)
    assert pad.due(511, speaking=False) == ("4#", 500)


@pytest.mark.fast
def test_the_model_is_told_which_keys_were_pressed() -> None:
    def turn(transcript: str, keys: str) -> EndOfTurn:
        return EndOfTurn(session="s", turn=1, transcript=transcript, speech_start_ns=0,
                         speech_end_ns=0, keys=keys)

    assert user_text(turn("", "1")) == "(The caller pressed 1 on the phone keypad.)"
    assert user_text(turn(" Yes. ", "")) == "Yes."
    assert user_text(turn("My PIN", "42#")) == (
        "My PIN (The caller pressed 4 2 # on the phone keypad.)")


async def test_a_key_is_a_turn_and_keys_during_speech_wait_for_its_end() -> None:
    async with StageRunner(SttStage(engine=FakeTranscriber(default_text="hello there")),
                           region=REGION) as runner:
        feed = memory_feed(runner, "phone")

        async def frame(keys: str = "") -> None:
            await runner.send(AudioIn(session="phone", seq=feed.seq, sample_rate_hz=16_000,
                                      capture_ns=feed.position_ns, pcm=SILENCE_20MS, keys=keys))
            feed.seq += 1
            feed.position_ns += 20_000_000

        await frame("1")
        for _ in range(70):  # 1.4 s of silence: past the gap after the key
            await frame()
        await runner.tap.until(lambda t: len(t.of(EndOfTurn, "phone")) == 1)
        await frame("4")
        await frame("2")
        await frame("#")  # at once: no gap to wait for
        await runner.tap.until(lambda t: len(t.of(EndOfTurn, "phone")) == 2)
        speech = pcm_of(fixture_named("museum"))
        half = len(speech) // 2 // 640 * 640
        await feed.play(speech[:half])
        await frame("9")  # pressed while the caller talks
        await feed.play(speech[half:])
        await feed.play(np.zeros(16_000 * 2, np.int16).tobytes())
        await runner.tap.until(lambda t: len(t.of(EndOfTurn, "phone")) == 4)
        tap = runner.tap
    ends = [(e.turn, e.transcript, e.keys) for e in tap.of(EndOfTurn, "phone")]
    assert ends == [(1, "", "1"), (2, "", "42#"), (3, "hello there", ""), (4, "", "9")]
    assert [e.turn for e in tap.of(UserStartedSpeaking, "phone")] == [1, 2, 3, 4]
    first = tap.of(EndOfTurn, "phone")[0]
    assert first.speech_start_ns == first.speech_end_ns  # the key's own time: no speech
