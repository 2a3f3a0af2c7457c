"""Piper, the fast CPU voice (marked ``model``): what it says Whisper hears back, a forward pass
stops at once when aborted, it is faster than Kokoro on the same short units, and a reply's first
frame is its voice, not the silence Piper opens a unit with."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from tests.tts.conftest import abort_midway
from tests.tts.test_tts_stage import listen, send_reply
from voxbus.audio import resample
from voxbus.runtime.bus import Bus
from voxbus.runtime.engine_thread import Abort
from voxbus.runtime.testing import running, wait_until
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import word_errors
from voxbus.services.tts.clauses import UnitSplitter
from voxbus.services.tts.engine import SAMPLE_RATE_HZ, KokoroEngine, SynthesisAborted, Synthesizer
from voxbus.services.tts.framing import VOICE_FLOOR
from voxbus.services.tts.piper import PiperEngine
from voxbus.services.tts.settings import TtsSettings
from voxbus.services.tts.stage import TtsStage

pytestmark = pytest.mark.model

SENTENCES = ["Sure, I can help with that.", "The museum opens at nine in the morning.",
             "Your table for four is booked for tonight."]


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperEngine]:
    engine = PiperEngine()
    engine.warmup()
    yield engine


@pytest.fixture(scope="module")
def whisper() -> WhisperEngine:
    return WhisperEngine()


def test_whisper_hears_what_piper_says(piper: PiperEngine, whisper: WhisperEngine) -> None:
    assert isinstance(piper, Synthesizer)
    assert piper.sample_rate_hz == SAMPLE_RATE_HZ and piper.default_voice == "joe"
    for text in SENTENCES:
        audio = piper.synthesize(text)
        assert audio.dtype == np.float32 and 0.5 < audio.size / SAMPLE_RATE_HZ < 5.0
        heard = whisper.transcribe(resample(audio, in_rate_hz=SAMPLE_RATE_HZ,
                                            out_rate_hz=16_000)).text
        assert word_errors(text, heard) <= 1, (text, heard)
    assert piper.synthesize("... 🙂").size == 0


REPLIES = [
    "I'm sorry for any inconvenience, but I can't check that for you right now.",
    "The weather is supposed to be a little bit cooler tomorrow.",
    "The journey to the airport is approximately two hours by car.",
    "The pharmacy is still open until nine tonight.",
    "Your dentist appointment has been moved to Friday morning.",
    "You parked the car on the second floor of the garage.",
]


def test_a_three_word_first_unit_is_heard_as_well_as_a_five_word_one(
    piper: PiperEngine, whisper: WhisperEngine
) -> None:
    """Piper's first unit is cut after three words by default (its first audio comes sooner);
    the replies, spoken unit by unit as the stage does, are heard as well as with five."""
    assert TtsStage(TtsSettings(), engine=piper).first_words == 3
    assert TtsStage(TtsSettings(first_words=5), engine=piper).first_words == 5
    errors = {3: 0, 5: 0}
    for first_words in errors:
        for reply in REPLIES:
            splitter = UnitSplitter(first_words=first_words, first_lookahead=0)
            units = [u for word in reply.split(" ") for u in splitter.push(word + " ")]
            units += splitter.finish()
            assert len(units[0].text.split()) <= first_words + 1, units[0]
            audio = np.concatenate([piper.synthesize(u.text) for u in units])
            heard = whisper.transcribe(resample(audio, in_rate_hz=SAMPLE_RATE_HZ,
                                                out_rate_hz=16_000)).text
            errors[first_words] += word_errors(reply, heard)
    assert errors[3] <= errors[5] + 1, errors


def test_abort_stops_a_piper_forward_pass(piper: PiperEngine) -> None:
    outcome, ran_on_s = abort_midway(piper, " ".join(SENTENCES * 6), after_s=0.15)
    # aborted (it did not run to the end of ~3 s of text), and at once: the bound is loose
    # because a loaded 2-core machine can hold the thread off the CPU for a while
    assert isinstance(outcome, SynthesisAborted)
    assert ran_on_s < 1.0, f"the forward pass ran {ran_on_s:.3f} s after the abort"
    assert piper.synthesize("Still works.", abort=Abort()).size > 0


def test_piper_is_faster_than_kokoro_on_short_units(piper: PiperEngine,
                                                     kokoro: KokoroEngine) -> None:
    """Medians of three, both on this machine's shared cores: not a benchmark, a sanity check
    that the fast voice is the fast one (``voxbus bench tts`` has the numbers)."""
    def median_s(engine: Synthesizer, text: str) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            engine.synthesize(text)
            times.append(time.perf_counter() - t0)
        return sorted(times)[1]

    for text in ("Sure,", "Sure, I can help."):
        assert median_s(piper, text) < median_s(kokoro, text), text


async def test_the_stage_speaks_with_piper_when_asked() -> None:
    stage = TtsStage(TtsSettings(engine="piper", intra_op_threads=1))
    await stage.start()
    try:
        assert isinstance(stage.engine, PiperEngine)
    finally:
        await stage.stop()


async def test_a_reply_s_first_frame_is_its_voice(bus: Bus, piper: PiperEngine,
                                                  whisper: WhisperEngine) -> None:
    """Piper opens "Dear Sarah," with 70-90 ms of silence; the stage sends the first frame from
    10 ms before the voice, and Whisper still hears every word."""
    text = "Dear Sarah, I hope you are well."
    unit = piper.synthesize("Dear Sarah,")
    assert np.flatnonzero(np.abs(unit) >= VOICE_FLOOR)[0] >= SAMPLE_RATE_HZ * 40 // 1000
    heard = await listen(bus, "lead")
    async with running(bus, TtsStage(TtsSettings(engine="piper", cache_entries=0),
                                     engine=piper)):
        await send_reply(bus, "lead", 1, text, cuts=[11])
        await wait_until(lambda: heard.done(1), timeout_s=30)
    frames = heard.turn(1)
    first = np.frombuffer(frames[0].pcm, dtype="<i2").astype(np.float32) / 32767
    onset = np.flatnonzero(np.abs(first) >= VOICE_FLOOR)
    assert onset.size and onset[0] <= SAMPLE_RATE_HZ * 12 // 1000, "the reply opens in silence"
    pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2")
    audio = (pcm / 32767).astype(np.float32)
    said = whisper.transcribe(resample(audio, in_rate_hz=SAMPLE_RATE_HZ, out_rate_hz=16_000)).text
    # every word heard ("you're" for "you are" is Whisper's spelling, not a word lost)
    assert word_errors(text, said.replace("you're", "you are")) == 0, said
