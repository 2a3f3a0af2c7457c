"""Pure audio helpers of the bridge: 20 ms framing of the microphone, format conversion of the
agent's frames, and the playout ledger that knows which agent frames were actually heard."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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


def to_mono(pcm: bytes, channels: int) -> npt.NDArray[np.int16]:
    x: npt.NDArray[np.int16] = np.frombuffer(pcm, dtype="<i2")
    if channels == 1:
        return x
    usable = len(x) - len(x) % channels
    mono: npt.NDArray[np.int16] = x[:usable].reshape(-1, channels).mean(axis=1).astype(np.int16)
    return mono


def convert(pcm: bytes, *, rate: int, channels: int, out_rate: int) -> bytes:
    """PCM16 of any rate/layout to mono ``out_rate``. Frame-local linear interpolation: the agent's
    frames keep their boundaries (each carries a text span), at the cost of a tiny edge error."""
    x = to_mono(pcm, channels)
    if rate == out_rate or len(x) == 0:
        return x.astype("<i2").tobytes()
    n_out = max(1, round(len(x) * out_rate / rate))
    pos = np.arange(n_out, dtype=np.float64) * (rate / out_rate)
    y = np.interp(pos, np.arange(len(x), dtype=np.float64), x.astype(np.float64))
    return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


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
