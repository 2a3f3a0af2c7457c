"""Pure audio helpers of the bridge: 20 ms framing of the microphone, conversion of the
agent's frames to the track's format, and the playout ledger that knows which agent frames
were actually heard."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from voxbus.audio import PcmConverter, float32_to_pcm16

BYTES_PER_SAMPLE = 2


class FrameBatcher:
    """Re-cuts PCM16 mono chunks of any size into frames of exactly ``samples`` samples."""

    def __init__(self, samples: int) -> None:
        self.frame_bytes = samples * BYTES_PER_SAMPLE
        self._buf = bytearray()

    def push(self, pcm: bytes | memoryview) -> Iterator[bytes]:
        self._buf += pcm
        while len(self._buf) >= self.frame_bytes:
            out = bytes(self._buf[: self.frame_bytes])
            del self._buf[: self.frame_bytes]
            yield out

    def __len__(self) -> int:
        return len(self._buf)


class AgentAudio:
    """One session's agent frames, converted to the track's rate and mono as one stream (the
    resampler keeps its history across frames, so 20 ms frames join without clicks). A reply's
    ``last`` frame flushes what the resampler still holds."""

    def __init__(self, out_rate_hz: int) -> None:
        self.out_rate_hz = out_rate_hz
        self._conv: PcmConverter | None = None

    def push(self, pcm: bytes, *, rate: int, channels: int, last: bool = False) -> bytes:
        """PCM16 ``pcm`` as mono PCM16 at ``out_rate_hz``. Raises ValueError for bad PCM."""
        if rate == self.out_rate_hz and channels == 1 and self._conv is None:
            if len(pcm) % BYTES_PER_SAMPLE:
                raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm)}")
            return pcm
        parts: list[npt.NDArray[np.float32]] = []
        conv = self._conv
        if conv is None or (conv.sample_rate_hz, conv.channels) != (rate, channels):
            if conv is not None:
                parts.append(conv.flush())
            conv = self._conv = PcmConverter(sample_rate_hz=rate, channels=channels,
                                             out_rate_hz=self.out_rate_hz)
        parts.append(conv.push(pcm))
        if last:
            parts.append(conv.flush())
            self._conv = None
        return float32_to_pcm16(np.concatenate(parts))


def rms(pcm: bytes) -> float:
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(math.sqrt(float(np.mean(x * x)))) if len(x) else 0.0


@dataclass(slots=True, kw_only=True)
class AgentFrame:
    """One agent frame on its way to the room (mono, the track's rate)."""

    session: str
    turn: int
    seq: int
    pcm: bytes
    duration_s: float
    text_end: int = 0
    last: bool = False
    start_t: float = 0.0
    end_t: float = 0.0
    cancelled: bool = False


class PlayoutLedger:
    """Frames handed to the AudioSource, with the (monotonic) time each starts and ends playing.

    The source plays frames back to back; a frame captured after the queue ran dry starts when it is
    captured. So ``start = max(end of the previous frame, capture time)``. A frame counts as played
    once its playout began (it left the source's queue); ``settle(now)`` hands those over.
    """

    def __init__(self) -> None:
        self._frames: deque[AgentFrame] = deque()
        self._cursor = 0.0

    def captured(self, f: AgentFrame, at: float) -> None:
        f.start_t = max(self._cursor, at)
        f.end_t = f.start_t + f.duration_s
        self._cursor = f.end_t
        self._frames.append(f)

    def settle(self, now: float) -> list[AgentFrame]:
        """Frames whose playout began by ``now`` (removed from the ledger)."""
        out: list[AgentFrame] = []
        while self._frames and self._frames[0].start_t <= now:
            out.append(self._frames.popleft())
        return out

    def unplayed(self) -> list[AgentFrame]:
        return list(self._frames)

    def clear(self, now: float) -> list[AgentFrame]:
        """The source's queue was cleared at ``now``: what was still queued is dropped."""
        dropped = list(self._frames)
        self._frames.clear()
        self._cursor = now
        return dropped

    def queued_s(self, now: float) -> float:
        return max(0.0, self._cursor - now)

    def __len__(self) -> int:
        return len(self._frames)
