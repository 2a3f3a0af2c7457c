"""Talk behind the caller holds no turn open: where the partials' decodes heard the caller's
last word ends the turn while the VAD still hears (their) speech (``STT_WORDS_PAUSE_MS``).
Scripted probabilities and hints, 512-sample windows (32 ms)."""

from __future__ import annotations

import numpy as np
import pytest

from voxbus.services.stt.turns import (
    EndOfTurn,
    PartialDue,
    Segmenter,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEvent,
)
from voxbus.services.stt.vad import ScriptedVad

pytestmark = pytest.mark.fast

W = 512
MS = 16
CFG = TurnConfig(words_pause_ms=300, incomplete_silence_ms=1000)


def talk(det: TurnDetector, n: int) -> list[TurnEvent]:
    """``n`` windows the VAD hears as speech (the caller, or people behind them)."""
    out: list[TurnEvent] = []
    for _ in range(n):
        out += det.push(0.9, W)
    return out


def opened(judge: bool | None = True, config: TurnConfig = CFG
           ) -> tuple[TurnDetector, list[tuple[int, int]]]:
    asked: list[tuple[int, int]] = []

    def ask(start: int, end: int) -> bool:
        asked.append((start, end))
        return bool(judge)

    det = TurnDetector(config, None if judge is None else ask)
    talk(det, 60)  # 1.92 s of speech
    return det, asked


def test_a_pause_in_the_words_under_talk_ends_the_turn_there() -> None:
    det, asked = opened()
    now = det.position
    words_end = now - 400 * MS
    events = det.words_heard(audio_start=0, decoded_to=now, words_end=words_end)
    assert len(events) == 1 and isinstance(events[0], EndOfTurn)
    end = events[0]
    assert not end.forced and end.speech_end_sample == words_end and end.at_sample == now
    cut = words_end + 200 * MS
    assert end.audio_end_sample == cut  # in the middle of the pause
    assert asked == [(0, words_end + 100 * MS)]  # the turn model heard up to the words' end
    assert det.ended_on_words == 1 and not det.speaking
    # the talk goes on: the next turn opens at the cut, so no audio falls between the two
    (started,) = [e for e in talk(det, 1) if isinstance(e, SpeechStarted)]
    assert started.speech_start_sample == cut and det.retain_from_sample == cut


def test_words_that_go_on_keep_the_turn() -> None:
    det, asked = opened()
    now = det.position
    assert det.words_heard(audio_start=0, decoded_to=now, words_end=now - 200 * MS) == []
    assert asked == [] and det.speaking


def test_an_incomplete_sounding_pause_waits_for_the_longer_one() -> None:
    det, asked = opened(judge=False)
    now = det.position
    assert det.words_heard(audio_start=0, decoded_to=now, words_end=now - 400 * MS) == []
    assert len(asked) == 1 and det.speaking
    talk(det, 20)
    later = det.position
    events = det.words_heard(audio_start=0, decoded_to=later, words_end=now - 400 * MS)
    assert [type(e) for e in events] == [EndOfTurn]
    assert len(asked) == 1  # past incomplete_silence_ms it ends without asking


def test_without_a_turn_model_the_pause_alone_ends_it() -> None:
    det, _ = opened(judge=None)
    now = det.position
    events = det.words_heard(audio_start=0, decoded_to=now, words_end=now - 300 * MS)
    assert [type(e) for e in events] == [EndOfTurn]


def test_talk_without_a_word_ends_only_after_the_incomplete_silence() -> None:
    det, asked = opened()
    assert det.words_heard(audio_start=0, decoded_to=det.position - 1000 * MS, words_end=0) == []
    events = det.words_heard(audio_start=0, decoded_to=det.position, words_end=0)
    assert [type(e) for e in events] == [EndOfTurn] and asked == []


def test_a_pause_the_vad_hears_is_left_to_the_silence_rule() -> None:
    det, asked = opened()
    det.push(0.05, W)  # silent now: the silence rule owns this pause
    now = det.position
    assert det.words_heard(audio_start=0, decoded_to=now, words_end=now - 500 * MS) == []
    assert asked == [] and det.speaking


def test_a_hint_for_another_turn_or_with_the_setting_off_does_nothing() -> None:
    det, _ = opened()
    now = det.position
    assert det.words_heard(audio_start=32 * W, decoded_to=now, words_end=now - 500 * MS) == []
    off, _ = opened(config=TurnConfig())
    assert off.words_heard(audio_start=0, decoded_to=now, words_end=now - 500 * MS) == []
    assert det.speaking and off.speaking


def test_the_segmenter_takes_hints_once_it_knows_the_callers_voice() -> None:
    first, gap, talk_on = 40, 20, 70
    probs = [0.9] * first + [0.05] * gap + [0.9] * talk_on
    levels = [-20.0] * first + [-70.0] * gap + [-22.0] * talk_on
    seg = Segmenter(vad=ScriptedVad(probs, window_samples=W, levels_db=levels), config=CFG,
                    turn_model=lambda audio: True, foreground_db=6.0)
    stream = np.linspace(-0.5, 0.5, len(probs) * W).astype(np.float32)
    got = seg.push(stream[:20 * W])
    due = [s.event for s in got if isinstance(s.event, PartialDue)][-1]
    seg.words_heard(audio_start=due.audio_start_sample, decoded_to=due.at_sample,
                    words=[(0.0, 0.1)])
    assert [s for s in seg.push(stream[20 * W:21 * W]) if isinstance(s.event, EndOfTurn)] == []
    upto = (first + gap + 60) * W
    got = seg.push(stream[21 * W:upto])  # the first turn ends: the caller's voice is known
    due = [s.event for s in got if isinstance(s.event, PartialDue)][-1]
    seg.words_heard(audio_start=due.audio_start_sample, decoded_to=due.at_sample,
                    words=[(0.2, 0.5), (0.6, (due.at_sample - due.audio_start_sample) / 16_000
                                        - 0.4)])
    assert seg.detector.speaking  # nothing happens until audio comes
    ends = [s for s in seg.push(stream[upto:upto + W]) if isinstance(s.event, EndOfTurn)]
    assert len(ends) == 1 and ends[0].audio is not None
    assert isinstance(ends[0].event, EndOfTurn)
    cut = ends[0].event.audio_end_sample
    assert np.array_equal(ends[0].audio, stream[due.audio_start_sample:cut])
