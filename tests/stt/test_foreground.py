"""The foreground gate on scripted (probability, level) windows: talk behind the caller is heard
as silence once the caller's voice is known; the caller's own quiet syllables are not."""

from __future__ import annotations

import numpy as np
import pytest

from voxbus.services.stt.foreground import HOLD_WINDOWS, MIN_VOICE_WINDOWS, Foreground
from voxbus.services.stt.turns import EndOfTurn, Segmenter, TurnConfig
from voxbus.services.stt.vad import ScriptedVad

pytestmark = pytest.mark.fast


def gate(margin_db: float = 10.0) -> Foreground:
    return Foreground(margin_db=margin_db, speech_threshold=0.35)


def test_off_or_unmeasured_changes_nothing() -> None:
    assert gate(0.0).hear(0.9, -60.0) == 0.9
    assert gate().hear(0.9, None) == 0.9


def test_talk_behind_the_caller_is_silence_after_the_hold() -> None:
    g = gate()
    assert all(g.hear(0.9, -20.0) == 0.9 for _ in range(MIN_VOICE_WINDOWS))
    heard = [g.hear(0.9, -34.0) for _ in range(HOLD_WINDOWS + 3)]
    assert heard[: HOLD_WINDOWS - 1] == [0.9] * (HOLD_WINDOWS - 1)  # the caller's last word held
    assert heard[HOLD_WINDOWS:] == [0.0] * 3
    assert g.gated >= 3


def test_the_callers_quiet_syllable_keeps_its_word() -> None:
    g = gate()
    for _ in range(MIN_VOICE_WINDOWS):
        g.hear(0.9, -20.0)
    assert g.hear(0.9, -38.0) == 0.9  # one quiet window between loud ones
    assert g.hear(0.9, -21.0) == 0.9


def test_talk_alone_is_learned_until_the_caller_speaks_louder() -> None:
    g = gate()
    for _ in range(MIN_VOICE_WINDOWS):
        assert g.hear(0.9, -34.0) == 0.9  # nothing known yet: it may be the caller
    for _ in range(MIN_VOICE_WINDOWS):
        assert g.hear(0.9, -20.0) == 0.9
    for _ in range(HOLD_WINDOWS):
        g.hear(0.9, -34.0)
    assert g.hear(0.9, -34.0) == 0.0


def test_a_turn_ends_after_the_callers_words_though_talk_goes_on() -> None:
    script = [(0.9, -20.0)] * 60 + [(0.9, -34.0)] * 100  # 1.9 s of caller, 3.2 s of talk
    ends = {}
    for margin in (0.0, 10.0):
        vad = ScriptedVad([p for p, _ in script], levels_db=[level for _, level in script])
        seg = Segmenter(vad=vad, config=TurnConfig(), foreground_db=margin)
        events = []
        for _ in range(0, 160 * 512, 320):
            events += seg.push(np.zeros(320, dtype=np.float32))
        events += seg.finish()
        end = next(s.event for s in events if isinstance(s.event, EndOfTurn))
        ends[margin] = (end.at_sample - 60 * 512) / 16
    assert ends[0.0] > 3000  # held until the talk stopped (forced at the end)
    assert ends[10.0] < 300 + HOLD_WINDOWS * 32 + 40  # the usual silence after the last word
