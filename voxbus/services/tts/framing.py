"""Cut synthesized float32 audio into fixed PCM16 frames, each mapped to the text it speaks.

Decision: every frame has the same size; the last frame of a unit is padded with silence (at most
one frame, 20 ms by default). Constant frames are what WebRTC/LiveKit audio sources expect, and the
padding is shorter than the gap between units anyway. ``pad_last=False`` keeps it short instead.

Text spans are proportional within a unit: frame ``i`` covers the characters of the unit's span in
the same proportion as its *real* (unpadded) samples cover the unit's audio. Consecutive frames'
spans tile the unit's span, and the last frame ends exactly at the unit's end, so after the last
frame played the bridge can report ``reply[:frame.text_end]`` as spoken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

SAMPLE_RATE_HZ: Final = 24_000
FRAME_MS: Final = 20
PCM16_MAX: Final = 32767


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """``pcm``: PCM16 little-endian mono bytes; ``samples``: real (unpadded) samples in it."""

    pcm: bytes
    samples: int
    text_start: int
    text_end: int


def samples_per_frame(sample_rate_hz: int = SAMPLE_RATE_HZ, frame_ms: int = FRAME_MS) -> int:
    """Samples in one frame: 480 for 20 ms at 24 kHz."""
    samples, rest = divmod(sample_rate_hz * frame_ms, 1000)
    if samples <= 0 or rest:
        raise ValueError(f"{frame_ms} ms at {sample_rate_hz} Hz is not a whole number of samples")
    return samples


def to_pcm16(audio: NDArray[np.floating]) -> bytes:
    """Float audio in [-1, 1] (clipped) as PCM16 little-endian bytes."""
    scaled = np.rint(np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * PCM16_MAX)
    return scaled.astype("<i2").tobytes()


def split_frames(
    audio: NDArray[np.floating],
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    frame_ms: int = FRAME_MS,
    pad_last: bool = True,
) -> list[bytes]:
    """PCM16 frames of ``frame_ms``; the last one zero-padded (or short if ``pad_last=False``)."""
    size = samples_per_frame(sample_rate_hz, frame_ms)
    pcm = to_pcm16(np.asarray(audio).reshape(-1))
    step = size * 2
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    if pad_last and frames and len(frames[-1]) < step:
        frames[-1] = frames[-1] + bytes(step - len(frames[-1]))
    return frames


#: Where a reply's first sound starts: the first sample at or above -50 dBFS.
VOICE_FLOOR: Final = 10 ** (-50 / 20)
#: Silence kept before it (a fade-in, never a click).
LEAD_KEEP_MS: Final = 10


def trim_leading_silence(audio: NDArray[np.floating], *, sample_rate_hz: int = SAMPLE_RATE_HZ,
                         keep_ms: int = LEAD_KEEP_MS) -> NDArray[np.floating]:
    """``audio`` from ``keep_ms`` before its first sample at or above ``VOICE_FLOOR``.

    The engines open every unit with silence (Piper 0-90 ms, Kokoro 20-50 ms measured here),
    which the caller would wait through before the reply's first word. Audio that is silent
    throughout is returned whole.
    """
    flat = np.asarray(audio).reshape(-1)
    loud = np.flatnonzero(np.abs(flat) >= VOICE_FLOOR)
    if loud.size == 0:
        return flat
    return flat[max(0, int(loud[0]) - sample_rate_hz * keep_ms // 1000):]


def frame_spans(
    total_samples: int, span: tuple[int, int], *, frame_samples: int
) -> list[tuple[int, int]]:
    """The text span each frame covers, proportional to its samples; they tile ``span``."""
    start, end = span
    if end < start:
        raise ValueError(f"bad span {span}")
    if total_samples <= 0:
        return []
    count = -(-total_samples // frame_samples)
    spans: list[tuple[int, int]] = []
    previous = start
    for i in range(1, count + 1):
        done = min(i * frame_samples, total_samples)
        current = start + (end - start) * done // total_samples
        spans.append((previous, current))
        previous = current
    return spans


def frame_audio(
    audio: NDArray[np.floating],
    span: tuple[int, int],
    *,
    sample_rate_hz: int = SAMPLE_RATE_HZ,
    frame_ms: int = FRAME_MS,
    pad_last: bool = True,
) -> list[AudioFrame]:
    """Frames of one unit's audio, each with the part of the unit's text span it speaks.

    Empty audio (an unpronounceable unit) gives no frames: the caller counts the unit's span as
    spoken once the frames before it have played.
    """
    flat = np.asarray(audio).reshape(-1)
    size = samples_per_frame(sample_rate_hz, frame_ms)
    pcm = split_frames(flat, sample_rate_hz=sample_rate_hz, frame_ms=frame_ms, pad_last=pad_last)
    spans = frame_spans(flat.size, span, frame_samples=size)
    return [
        AudioFrame(
            pcm=frame,
            samples=min(size, flat.size - i * size),
            text_start=text_start,
            text_end=text_end,
        )
        for i, (frame, (text_start, text_end)) in enumerate(zip(pcm, spans, strict=True))
    ]


def snap_to_word(text: str, offset: int) -> int:
    """``offset`` moved back to the end of the last whole word before it (for "what was said").

    An offset inside a word moves back to before that word; trailing whitespace is dropped.
    """
    offset = max(0, min(offset, len(text)))
    if 0 < offset < len(text) and _in_word(text[offset - 1]) and _in_word(text[offset]):
        while offset > 0 and _in_word(text[offset - 1]):
            offset -= 1
    return len(text[:offset].rstrip())


def _in_word(char: str) -> bool:
    return char.isalnum() or char in "'’"
