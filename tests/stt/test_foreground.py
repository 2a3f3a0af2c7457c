"""The caller's turn or talk behind them, on scripted (probability, level) windows: a turn whose
voice is far under the caller's is dropped; the caller's own quiet syllables do not count
against their turn."""

from __future__ import annotations

import numpy as np
import pytest

from voxbus.services.stt.foreground import DECAY_DB_PER_S, Foreground
from voxbus.services.stt.turns import EndOfTurn, Segment, Segmenter, TurnConfig
from voxbus.services.stt.vad import ScriptedVad

pytestmark = pytest.mark.fast


def judge(margin_db: float = 6.0) -> Foreground:
    return Foreground(margin_db=margin_db, speech_threshold=0.35)


def turn(g: Foreground, levels: list[float], at_s: float) -> bool:
    start = round(at_s * 16_000) - len(levels) * 512
    g.turn_started(start)
    for i, level in enumerate(levels):
        g.hear(0.9, level, start + (i + 1) * 512)
    return g.turn_ended(at_s, start + len(levels) * 512)


def test_off_or_unmeasured_keeps_every_turn() -> None:
    off = judge(0.0)
    assert not turn(off, [-20.0] * 30, 1.0) and not turn(off, [-60.0] * 30, 2.0)
    g = judge()
    g.turn_started(0)
    g.hear(0.9, None, 512)
    assert not g.turn_ended(1.0, 512) and g.voice_db is None


def test_a_turn_far_under_the_callers_voice_is_talk_behind() -> None:
    g = judge()
    assert not turn(g, [-20.0] * 30, 2.0)  # the first turn sets the caller's voice
    assert turn(g, [-31.0] * 30, 4.0)  # 11 dB under: people behind the caller
    assert not turn(g, [-24.0] * 30, 6.0)  # 4 dB under: the caller, a little quieter
    assert g.dropped == 1


def test_the_callers_quiet_syllables_do_not_count_against_them() -> None:
    g = judge()
    turn(g, [-20.0] * 30, 2.0)
    # a turn of loud syllables and the quiet stretches between them, as low as talk behind
    assert not turn(g, [-21.0, -38.0, -36.0] * 20, 4.0)


def test_windows_the_vad_calls_silence_are_not_the_turns_voice() -> None:
    g = judge()
    turn(g, [-20.0] * 30, 2.0)
    g.turn_started(40_000)
    for i in range(30):
        g.hear(0.1, -10.0, 40_000 + 1024 * i + 512)  # loud, but not speech
        g.hear(0.9, -32.0, 40_000 + 1024 * i + 1024)
    assert g.turn_ended(4.0, 40_000 + 30 * 1024)


def test_a_turn_cut_in_the_talk_is_judged_on_its_own_windows() -> None:
    g = judge()
    turn(g, [-20.0] * 30, 2.0)
    g.turn_started(40_000)
    for i in range(40):  # talk alone, then the caller starts again after the cut
        g.hear(0.9, -32.0 if i < 30 else -20.0, 40_000 + (i + 1) * 512)
    assert g.turn_ended(4.0, 40_000 + 30 * 512)
    g.turn_started(40_000 + 30 * 512)  # the next turn opens at the cut with the caller's windows
    assert not g.turn_ended(5.0, 40_000 + 40 * 512)


def test_the_callers_voice_is_followed_when_they_move_away() -> None:
    g = judge()
    turn(g, [-20.0] * 30, 2.0)
    later = 2.0 + 8.0 / DECAY_DB_PER_S  # long enough for 8 dB
    assert not turn(g, [-30.0] * 30, later)
    assert turn(g, [-45.0] * 30, later + 1.0)


def test_the_segmenter_marks_talk_after_the_callers_turn() -> None:
    caller, gap, talk = 60, 40, 60
    probs = [0.9] * caller + [0.05] * gap + [0.9] * talk + [0.05] * gap
    levels = [-20.0] * caller + [-70.0] * gap + [-33.0] * talk + [-70.0] * gap
    ends: list[Segment] = []
    for margin in (0.0, 6.0):
        seg = Segmenter(vad=ScriptedVad(probs, levels_db=levels), config=TurnConfig(),
                        foreground_db=margin)
        out = []
        for _ in range(0, len(probs) * 512, 320):
            out += seg.push(np.zeros(320, dtype=np.float32))
        got = [s for s in out if isinstance(s.event, EndOfTurn)]
        assert len(got) == 2
        ends += got
    assert [s.talk_behind for s in ends] == [False, False, False, True]


def test_the_callers_words_are_the_loud_ones() -> None:
    g = judge()
    assert g.callers_words_end([(0, 5000)]) is None  # no voice known yet
    turn(g, [-20.0] * 30, 2.0)
    g.turn_started(40_000)
    levels = [-22.0] * 20 + [-34.0] * 20  # the caller's words, then talk behind them
    for i, level in enumerate(levels):
        g.hear(0.9, level, 40_000 + (i + 1) * 512)
    caller = (40_000 + 512, 40_000 + 18 * 512)
    talk = (40_000 + 24 * 512, 40_000 + 38 * 512)
    assert g.callers_words_end([caller, talk]) == caller[1]
    assert g.callers_words_end([talk]) is None
