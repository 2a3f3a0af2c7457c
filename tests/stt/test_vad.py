from __future__ import annotations

import numpy as np
import pytest

from tests.stt.conftest import FIXTURE_IDS, FIXTURES, SpeechFixture
from voxbus.services.stt.turns import EndOfTurn, Segmenter, SpeechStarted, TurnEvent
from voxbus.services.stt.vad import ScriptedVad, SileroVad

TOLERANCE_MS = 150


@pytest.mark.fast
def test_scripted_vad_windows_and_offsets() -> None:
    vad = ScriptedVad([0.1, 0.9], window_samples=4, then=0.5)
    assert vad.process(np.zeros(3, dtype=np.float32)) == []
    got = vad.process(np.zeros(10, dtype=np.float32))
    assert [(w.start_sample, w.end_sample, w.probability) for w in got] == [
        (0, 4, 0.1),
        (4, 8, 0.9),
        (8, 12, 0.5),
    ]


@pytest.mark.model
def test_silero_windows_are_512_samples_and_independent_of_chunking() -> None:
    rng = np.random.default_rng(0)
    audio = (0.3 * rng.standard_normal(16_000)).astype(np.float32)
    whole = SileroVad().process(audio)
    vad = SileroVad()
    assert vad.window_samples == 512
    pieces = []
    pieces.extend(vad.process(audio[:0]))  # an empty chunk is fine
    offset = 0
    for size in (1, 319, 320, 1000, 512, 7, 16_000):
        pieces.extend(vad.process(audio[offset : offset + size]))
        offset += size
    assert [(w.start_sample, w.end_sample) for w in pieces] == [
        (i * 512, (i + 1) * 512) for i in range(16_000 // 512)
    ]
    assert [w.probability for w in pieces] == pytest.approx([w.probability for w in whole])
    assert vad.samples_scored == 31 * 512


@pytest.mark.model
def test_silero_reset_forgets_state() -> None:
    vad = SileroVad()
    x = np.zeros(2048, dtype=np.float32)
    first = [w.probability for w in vad.process(x)]
    vad.process(np.ones(1000, dtype=np.float32) * 0.5)
    vad.reset()
    again = vad.process(x)
    assert [w.probability for w in again] == pytest.approx(first)
    assert again[0].start_sample == 0


@pytest.mark.model
@pytest.mark.parametrize("fx", FIXTURES, ids=FIXTURE_IDS)
def test_turn_bounds_on_speech_fixtures(fx: SpeechFixture) -> None:
    audio = fx.audio()
    seg = Segmenter(vad=SileroVad())
    events: list[TurnEvent] = []
    for i in range(0, audio.size, 320):  # 20 ms frames
        events.extend(s.event for s in seg.push(audio[i : i + 320]))
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, EndOfTurn)]
    assert len(starts) == len(ends) == 1, events
    assert not ends[0].forced
    start_ms = ends[0].speech_start_sample / 16
    end_ms = ends[0].speech_end_sample / 16
    assert abs(start_ms - fx.speech_start_ms) <= TOLERANCE_MS
    assert abs(end_ms - fx.speech_end_ms) <= TOLERANCE_MS
    # the final's audio covers the whole true speech span
    assert ends[0].audio_start_sample / 16 <= fx.speech_start_ms
    assert ends[0].audio_end_sample / 16 >= fx.speech_end_ms
