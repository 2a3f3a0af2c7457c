"""A session's audio path: PCM16 frames at any rate -> 16 kHz mono -> VAD and turn detector, with
the frames' capture times to put turn events on the audio timeline."""

from __future__ import annotations

import bisect

from voxbus.audio import PcmConverter, PcmError
from voxbus.contracts.messages import AudioIn
from voxbus.services.stt import turns
from voxbus.services.stt.audio import WHISPER_RATE_HZ

_NS_PER_SAMPLE = 1e9 / WHISPER_RATE_HZ


class Timeline:
    """Capture times of a stream's frames: turns 16 kHz stream positions into ns."""

    def __init__(self) -> None:
        self._pos: list[float] = []  # stream position (16 kHz samples) of each frame's start
        self._ns: list[int] = []  # its capture_ns
        self._seq: list[int] = []  # its AudioIn.seq

    def mark(self, position: float, capture_ns: int, seq: int = 0) -> None:
        self._pos.append(position)
        self._ns.append(capture_ns)
        self._seq.append(seq)

    def seq_at(self, sample: int) -> int:
        """The ``AudioIn.seq`` of the frame that holds stream position ``sample``."""
        if not self._pos:
            return 0
        return self._seq[max(0, bisect.bisect_right(self._pos, sample) - 1)]

    def ns_at(self, sample: int) -> int:
        if not self._pos:
            return 0
        i = max(0, bisect.bisect_right(self._pos, sample) - 1)
        return self._ns[i] + round((sample - self._pos[i]) * _NS_PER_SAMPLE)

    def forget_before(self, sample: int) -> None:
        """Drop marks no later query needs (amortised: in batches)."""
        i = bisect.bisect_right(self._pos, sample) - 1
        if i >= 256:
            del self._pos[:i]
            del self._ns[:i]
            del self._seq[:i]


class AudioFrontend:
    """One session's audio path: converter, VAD and turn detector, and the frames' capture times.
    Used from one thread, one frame at a time."""

    def __init__(self, segmenter: turns.Segmenter) -> None:
        self.segmenter = segmenter
        self.timeline = Timeline()
        self._conv: PcmConverter | None = None
        self._conv_start = 0  # stream position where the converter's output begins
        self._conv_frames = 0  # input frames (samples per channel) the converter has taken

    def push(self, frame: AudioIn) -> list[turns.Segment]:
        frame_bytes = 2 * frame.channels
        if len(frame.pcm) % frame_bytes:
            raise PcmError(
                f"PCM16 with {frame.channels} channel(s) needs a multiple of {frame_bytes} bytes, "
                f"got {len(frame.pcm)}"
            )
        out: list[turns.Segment] = []
        conv = self._conv
        if conv is None or (conv.sample_rate_hz, conv.channels) != (
            frame.sample_rate_hz,
            frame.channels,
        ):
            if conv is not None:  # format changed: release the old converter's tail, start anew
                out += self.segmenter.push(conv.flush())
            conv = self._conv = PcmConverter(
                sample_rate_hz=frame.sample_rate_hz, channels=frame.channels,
                out_rate_hz=WHISPER_RATE_HZ,
            )
            self._conv_start = self.segmenter.position
            self._conv_frames = 0
        self.timeline.mark(
            self._conv_start + self._conv_frames * WHISPER_RATE_HZ / conv.sample_rate_hz,
            frame.capture_ns,
            frame.seq,
        )
        self._conv_frames += len(frame.pcm) // frame_bytes
        out += self.segmenter.push(conv.push(frame.pcm))
        self.timeline.forget_before(self.segmenter.detector.retain_from_sample)
        return out
