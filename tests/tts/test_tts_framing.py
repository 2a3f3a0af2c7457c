"""Fixed PCM16 frames and their text spans."""

from __future__ import annotations

import numpy as np
import pytest

from voxbus.services.tts.framing import (
    frame_audio,
    frame_spans,
    samples_per_frame,
    snap_to_word,
    split_frames,
    to_pcm16,
    trim_leading_silence,
)

pytestmark = pytest.mark.fast


def test_samples_per_frame() -> None:
    assert samples_per_frame() == 480
    assert samples_per_frame(16_000, 10) == 160
    with pytest.raises(ValueError):
        samples_per_frame(22_050, 10)


def test_to_pcm16_scales_clips_and_is_little_endian() -> None:
    pcm = to_pcm16(np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0], dtype=np.float32))
    values = np.frombuffer(pcm, dtype="<i2").tolist()
    assert values == [0, 16384, -16384, 32767, -32767, 32767, -32767]
    assert to_pcm16(np.array([1.0], dtype=np.float32)) == b"\xff\x7f"


def test_frames_are_fixed_size_and_the_last_is_padded() -> None:
    audio = np.full(1000, 0.25, dtype=np.float32)
    frames = split_frames(audio)
    assert [len(f) for f in frames] == [960, 960, 960]
    tail = np.frombuffer(frames[-1], dtype="<i2")
    assert (tail[:40] != 0).all() and (tail[40:] == 0).all()
    assert [len(f) for f in split_frames(audio, pad_last=False)] == [960, 960, 80]
    assert len(split_frames(np.zeros(960, dtype=np.float32))) == 2
    assert split_frames(np.zeros(0, dtype=np.float32)) == []


def test_frame_spans_tile_the_unit_span() -> None:
    spans = frame_spans(1000, (10, 30), frame_samples=480)
    assert spans == [(10, 19), (19, 29), (29, 30)]
    assert frame_spans(0, (10, 30), frame_samples=480) == []
    many = frame_spans(24_000, (0, 7), frame_samples=480)
    assert len(many) == 50
    assert many[0][0] == 0 and many[-1][1] == 7
    assert all(a[1] == b[0] for a, b in zip(many, many[1:], strict=False))
    with pytest.raises(ValueError):
        frame_spans(10, (5, 4), frame_samples=480)


def test_frame_audio() -> None:
    audio = np.linspace(-0.5, 0.5, 1500, dtype=np.float32)
    frames = frame_audio(audio, (100, 117))
    assert len(frames) == 4
    assert all(len(f.pcm) == 960 for f in frames)
    assert [f.samples for f in frames] == [480, 480, 480, 60]
    assert frames[0].text_start == 100 and frames[-1].text_end == 117
    assert all(a.text_end == b.text_start for a, b in zip(frames, frames[1:], strict=False))
    joined = b"".join(f.pcm for f in frames)[: 1500 * 2]
    assert joined == to_pcm16(audio)
    assert frame_audio(np.zeros(0, dtype=np.float32), (0, 5)) == []


def test_snap_to_word() -> None:
    text = "Sure, I can't help with that."
    assert snap_to_word(text, 3) == 0  # inside "Sure"
    assert snap_to_word(text, 4) == 4  # "Sure" whole
    assert snap_to_word(text, 5) == 5  # "Sure,"
    assert snap_to_word(text, 6) == 5
    assert snap_to_word(text, 11) == 7  # inside "can't"
    assert snap_to_word(text, 13) == 13  # "can't" whole
    assert snap_to_word(text, 999) == len(text)
    assert snap_to_word(text, -3) == 0


def test_a_reply_starts_at_its_first_sound() -> None:
    rate = 24_000
    voice = np.full(rate // 10, 0.2, dtype=np.float32)
    hiss = np.full(rate * 60 // 1000, 0.001, dtype=np.float32)  # -60 dBFS: nobody hears it
    trimmed = trim_leading_silence(np.concatenate([hiss, voice]), sample_rate_hz=rate)
    assert trimmed.size == voice.size + rate * 10 // 1000  # 10 ms kept before the voice
    assert trim_leading_silence(voice, sample_rate_hz=rate).size == voice.size
    assert trim_leading_silence(hiss, sample_rate_hz=rate).size == hiss.size  # all quiet: kept
