"""TurnDetector and Segmenter on synthetic probability sequences (512-sample windows = 32 ms)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from voxbus.services.stt.turns import (
    AudioBuffer,
    EndOfTurn,
    PartialDue,
    Segmenter,
    SilenceBegan,
    SpeechResumed,
    SpeechStarted,
    TurnConfig,
    TurnDetector,
    TurnEvent,
)
from voxbus.services.stt.vad import ScriptedVad

pytestmark = pytest.mark.fast

W = 512  # samples per VAD window
MS = 16  # samples per millisecond


def windows(ms: int) -> int:
    """Number of whole windows covering `ms` milliseconds (rounded up)."""
    return -(-ms * MS // W)


def run(probs: Sequence[float], config: TurnConfig | None = None) -> list[TurnEvent]:
    det = TurnDetector(config)
    events: list[TurnEvent] = []
    for p in probs:
        events.extend(det.push(p, W))
    return events


def kinds(events: Sequence[TurnEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def speech(n: int, p: float = 0.9) -> list[float]:
    return [p] * n


def silence(n: int, p: float = 0.05) -> list[float]:
    return [p] * n


def test_silence_gives_nothing() -> None:
    assert run(silence(200)) == []


@pytest.mark.parametrize("click_windows", [1, 2, 3, 6])
def test_clicks_shorter_than_min_speech_are_ignored(click_windows: int) -> None:
    # min_speech 200 ms = 6.25 windows: up to 6 windows of "speech" is a click.
    probs = silence(10) + speech(click_windows, 0.99) + silence(40)
    assert run(probs) == []


def test_scattered_clicks_do_not_add_up_across_long_gaps() -> None:
    probs = silence(5) + (speech(2) + silence(12)) * 10  # gaps of 384 ms > end silence
    assert run(probs) == []


def test_one_utterance_full_event_sequence() -> None:
    onset, n_speech, n_sil = 10, 40, 20  # speech from 320 ms for 1280 ms
    events = run(silence(onset) + speech(n_speech) + silence(n_sil))
    assert kinds(events) == ["SpeechStarted"] + ["PartialDue"] * 3 + ["SilenceBegan", "EndOfTurn"]
    started, *partials, began, end = events
    assert isinstance(started, SpeechStarted)
    assert started.speech_start_sample == onset * W
    assert started.at_sample == (onset + windows(200)) * W  # confirmed after min speech
    assert all(isinstance(p, PartialDue) for p in partials)
    assert [p.at_sample for p in partials] == [(onset + k * windows(400)) * W for k in (1, 2, 3)]
    speech_end = (onset + n_speech) * W
    assert isinstance(began, SilenceBegan)
    assert began.speech_end_sample == speech_end
    assert began.at_sample == began.audio_end_sample == speech_end + W
    assert isinstance(end, EndOfTurn)
    assert (end.speech_start_sample, end.speech_end_sample) == (onset * W, speech_end)
    assert end.at_sample == speech_end + windows(300) * W
    assert (end.audio_start_sample, end.audio_end_sample) == (
        began.audio_start_sample,
        began.audio_end_sample,
    )
    assert end.audio_start_sample == onset * W - 200 * MS  # pre-roll
    assert not end.forced


def test_short_pause_is_speculative_silence_then_resume() -> None:
    probs = silence(5) + speech(20) + silence(5) + speech(20) + silence(15)
    events = run(probs)
    assert kinds(events).count("EndOfTurn") == 1
    seq = [k for k in kinds(events) if k != "PartialDue"]
    assert seq == ["SpeechStarted", "SilenceBegan", "SpeechResumed", "SilenceBegan", "EndOfTurn"]
    resumed = next(e for e in events if isinstance(e, SpeechResumed))
    assert resumed.at_sample == (5 + 20 + 5 + 1) * W
    end = events[-1]
    assert isinstance(end, EndOfTurn)
    assert end.speech_start_sample == 5 * W
    assert end.speech_end_sample == (5 + 20 + 5 + 20) * W


def test_hysteresis_between_thresholds() -> None:
    # 0.4 is below start (0.5) and above stop (0.35): it neither starts a turn...
    assert run(silence(5) + speech(30, 0.4) + silence(20)) == []
    # ...nor ends one once started, but it also does not resume from silence.
    events = run(
        silence(5) + speech(10) + speech(20, 0.4) + silence(3) + speech(5, 0.4) + silence(10)
    )
    ends = [e for e in events if isinstance(e, EndOfTurn)]
    assert len(ends) == 1
    assert ends[0].speech_end_sample == (5 + 10 + 20) * W
    assert "SpeechResumed" not in kinds(events)


def test_min_speech_counts_only_speech_windows() -> None:
    # 4 windows of speech, a 3-window gap, 3 more: 7 windows = 224 ms >= 200 ms.
    events = run(silence(3) + speech(4) + silence(3) + speech(3) + silence(20))
    assert kinds(events)[0] == "SpeechStarted"
    assert events[0].at_sample == (3 + 4 + 3 + 3) * W
    assert isinstance(events[0], SpeechStarted)
    assert events[0].speech_start_sample == 3 * W


def test_pre_roll_is_clamped_at_stream_start() -> None:
    end = run(speech(20) + silence(20))[-1]
    assert isinstance(end, EndOfTurn)
    assert end.audio_start_sample == 0


def test_speculative_silence_delay() -> None:
    cfg = TurnConfig(speculative_silence_ms=100)
    events = run(silence(5) + speech(20) + silence(2) + speech(10) + silence(20), cfg)
    # the 64 ms pause is too short to announce; the final silence is announced after 100 ms
    assert kinds(events).count("SilenceBegan") == 1
    assert "SpeechResumed" not in kinds(events)
    began = next(e for e in events if isinstance(e, SilenceBegan))
    assert began.at_sample == began.speech_end_sample + windows(100) * W


def test_end_silence_is_configurable() -> None:
    cfg = TurnConfig(end_silence_ms=600)
    events = run(silence(5) + speech(20) + silence(12) + speech(10) + silence(30), cfg)
    assert kinds(events).count("EndOfTurn") == 1
    end = events[-1]
    assert isinstance(end, EndOfTurn)
    assert end.at_sample - end.speech_end_sample == windows(600) * W


def test_partials_follow_speech_time_not_silence() -> None:
    cfg = TurnConfig(partial_interval_ms=320, end_silence_ms=1000)  # 10 windows
    events = run(silence(2) + speech(15) + silence(20) + speech(15) + silence(40), cfg)
    partials = [e for e in events if isinstance(e, PartialDue)]
    assert len(partials) == 3  # 30 speech windows / 10
    assert all(p.speech_start_sample == 2 * W for p in partials)


def test_max_utterance_forces_a_final_and_keeps_listening() -> None:
    cfg = TurnConfig(max_utterance_ms=2000, pre_roll_ms=0)  # 62.5 windows
    events = run(silence(4) + speech(150) + silence(20), cfg)
    ends = [e for e in events if isinstance(e, EndOfTurn)]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    assert [e.forced for e in ends] == [True, True, False]
    assert len(starts) == 3
    for end in ends:
        assert end.audio_end_sample - end.audio_start_sample <= 2000 * MS
    # consecutive turns tile the speech without gaps or overlap
    assert ends[0].audio_end_sample == starts[1].speech_start_sample == ends[1].audio_start_sample
    assert ends[1].audio_end_sample == starts[2].speech_start_sample
    assert ends[-1].speech_end_sample == (4 + 150) * W


def test_finish_closes_an_open_turn_and_drops_a_pending_one() -> None:
    det = TurnDetector()
    for p in silence(3) + speech(20):
        det.push(p, W)
    (end,) = det.finish()
    assert isinstance(end, EndOfTurn)
    assert end.forced and end.speech_end_sample == end.at_sample == 23 * W
    assert det.finish() == []
    det.reset()
    for p in silence(3) + speech(2):
        det.push(p, W)
    assert det.finish() == []


def test_detector_is_deterministic_for_any_window_size() -> None:
    probs = silence(7) + speech(33) + silence(4) + speech(12) + silence(25)
    det = TurnDetector()
    events: list[TurnEvent] = []
    for p in probs:
        events.extend(det.push(p, 256))  # 8 kHz-sized windows: same ms logic, half the samples
    assert kinds(events)[0] == "SpeechStarted" and kinds(events)[-1] == "EndOfTurn"
    assert events[0].at_sample == (7 + 13) * 256  # 13 windows of 16 ms >= 200 ms
    assert run(probs) == run(probs)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TurnConfig(start_threshold=0.3, stop_threshold=0.5)
    with pytest.raises(ValueError):
        TurnConfig(speculative_silence_ms=400, end_silence_ms=300)
    with pytest.raises(ValueError):
        TurnConfig(max_utterance_ms=100)
    with pytest.raises(ValueError):
        TurnDetector().push(0.9, 0)


def test_audio_buffer_addresses_absolute_samples_and_stays_bounded() -> None:
    buf = AudioBuffer(110)
    x = np.arange(1000, dtype=np.float32)
    for i in range(0, 1000, 30):
        buf.append(x[i : i + 30])
        buf.discard_before(buf.end_sample - 80)
        assert buf.end_sample - buf.start_sample <= 80
    assert buf._data.size == 110  # compacted, never grown
    np.testing.assert_array_equal(buf.slice(950, 960), x[950:960])
    np.testing.assert_array_equal(buf.slice(0, 930), x[920:930])  # clipped to what is held
    assert buf.slice(2000, 3000).size == 0
    buf.append(np.zeros(500, dtype=np.float32))  # larger than capacity: grows
    assert buf.end_sample == 1500


def ramp(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


def test_segmenter_attaches_the_right_audio() -> None:
    probs = silence(20) + speech(30) + silence(20)
    seg = Segmenter(vad=ScriptedVad(probs))
    x = ramp(len(probs) * W)  # sample value == sample index
    out = []
    for i in range(0, x.size, 320):  # 20 ms frames
        out.extend(seg.push(x[i : i + 320]))
    by_kind = {type(s.event).__name__: s for s in out}
    assert by_kind["SpeechStarted"].audio is None
    partial = by_kind["PartialDue"]
    assert isinstance(partial.event, PartialDue) and partial.audio is not None
    np.testing.assert_array_equal(
        partial.audio, x[partial.event.audio_start_sample : partial.event.at_sample]
    )
    final = by_kind["EndOfTurn"]
    assert isinstance(final.event, EndOfTurn) and final.audio is not None
    assert final.audio[0] == 20 * W - 200 * MS  # pre-roll included
    assert final.audio[-1] == final.event.audio_end_sample - 1
    spec = by_kind["SilenceBegan"]
    assert spec.audio is not None
    np.testing.assert_array_equal(spec.audio, final.audio)  # speculative == final audio


def test_segmenter_buffer_is_bounded_over_a_long_monologue() -> None:
    cfg = TurnConfig(max_utterance_ms=5000)
    n = windows(60_000)
    seg = Segmenter(vad=ScriptedVad(speech(n)), config=cfg)
    capacity = seg._buffer._data.size
    forced = 0
    frame = np.zeros(320, dtype=np.float32)
    for _ in range(n * W // 320):
        for s in seg.push(frame):
            if isinstance(s.event, EndOfTurn):
                forced += s.event.forced
                assert s.audio is not None and s.audio.size <= 5000 * MS
        assert seg._buffer.end_sample - seg._buffer.start_sample <= capacity
    assert forced == n // (5000 * MS // W)  # whole turns of at most 5 s; the rest is still open
    assert seg._buffer._data.size == capacity
    (last,) = seg.finish()
    assert isinstance(last.event, EndOfTurn) and last.event.forced
    assert last.audio is not None and last.audio.size > 0


def test_segmenter_finish_includes_audio_not_yet_scored() -> None:
    seg = Segmenter(vad=ScriptedVad(speech(20)))
    seg.push(np.ones(20 * W + 100, dtype=np.float32))
    (end,) = seg.finish()
    assert isinstance(end.event, EndOfTurn)
    assert end.event.audio_end_sample == 20 * W + 100
    assert end.audio is not None and end.audio.size == 20 * W + 100


class _Delay:
    """A denoiser that delays by 100 samples and halves."""

    delay_samples = 100
    delay_ms = 100 / 16

    def __init__(self) -> None:
        self._held = np.zeros(0, dtype=np.float32)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        joined = np.concatenate([self._held, chunk])
        due = max(0, joined.size - self.delay_samples)
        self._held = joined[due:]
        return joined[:due] * 0.5

    def reset(self) -> None:
        self._held = np.zeros(0, dtype=np.float32)


@pytest.mark.parametrize("denoised_decode", [True, False])
def test_a_denoiser_keeps_the_stream_positions(denoised_decode: bool) -> None:
    """The VAD hears the suppressed audio; the final holds the same samples by position, from
    the suppressed stream or (``denoised_decode=False``) from the audio as received."""
    probs = silence(20) + speech(30) + silence(20)
    x = ramp(len(probs) * W + 2000)
    plain = Segmenter(vad=ScriptedVad(probs))
    denoised = Segmenter(vad=ScriptedVad(probs), denoiser=_Delay(),
                         denoised_decode=denoised_decode)
    finals = []
    for seg in (plain, denoised):
        out = []
        for i in range(0, x.size, 320):
            out.extend(seg.push(x[i: i + 320]))
        finals.append(next(s for s in out if isinstance(s.event, EndOfTurn)))
    assert finals[0].event == finals[1].event
    end = finals[0].event
    assert isinstance(end, EndOfTurn)
    assert finals[0].audio is not None and finals[1].audio is not None
    expected = x[end.audio_start_sample:end.audio_end_sample] * 0.5
    np.testing.assert_array_equal(finals[1].audio,
                                  expected if denoised_decode else finals[0].audio)
