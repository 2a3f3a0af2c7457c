"""What the engines share: the fixed-delay output queue, and the trip to 48 kHz and back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Final

import numpy as np

from voxbus.audio import Float32Array, Resampler

RATE_HZ: Final = 16_000
RATE_48K_HZ: Final = 48_000
_EMPTY: Final[Float32Array] = np.zeros(0, dtype=np.float32)


class FixedDelayDenoiser(ABC):
    """A ``Denoiser`` around an engine core whose output is aligned with its input (sample n out
    is sample n in, denoised) and lags it by at most ``delay_samples``: the core's output is
    queued and handed out so that the total out is always the total in less that delay."""

    def __init__(self, delay_samples: int) -> None:
        self._delay = delay_samples
        self._in_total = 0
        self._out_total = 0
        self._ready = _EMPTY

    @property
    def delay_samples(self) -> int:
        return self._delay

    @property
    def delay_ms(self) -> float:
        return self._delay * 1000 / RATE_HZ

    def process(self, chunk: Float32Array) -> Float32Array:
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f"a denoiser takes mono 1-D audio, got shape {x.shape}")
        self._in_total += x.size
        done = self._core(x)
        self._ready = np.concatenate((self._ready, done)) if self._ready.size else done
        due = max(0, self._in_total - self._delay) - self._out_total
        if self._ready.size < due:  # the delay was computed wrong for this engine: a bug
            raise RuntimeError(f"{type(self).__name__}: {self._ready.size} samples ready, "
                               f"{due} due")
        out, self._ready = self._ready[:due], self._ready[due:]
        self._out_total += due
        return out

    def reset(self) -> None:
        self._in_total = self._out_total = 0
        self._ready = _EMPTY
        self._reset_core()

    @abstractmethod
    def _core(self, chunk: Float32Array) -> Float32Array:
        """Denoise ``chunk``; return the aligned output that is now complete."""

    @abstractmethod
    def _reset_core(self) -> None:
        """Drop the engine's state."""


class Via48k:
    """16 kHz -> 48 kHz for an engine, and its output back to 16 kHz (``voxbus.audio``'s
    resampler: aligned, about 1 ms each way)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._up = Resampler(in_rate_hz=RATE_HZ, out_rate_hz=RATE_48K_HZ)
        self._down = Resampler(in_rate_hz=RATE_48K_HZ, out_rate_hz=RATE_HZ)

    def up(self, chunk: Float32Array) -> Float32Array:
        return self._up.process(chunk)

    def down(self, chunk: Float32Array) -> Float32Array:
        return self._down.process(chunk) if chunk.size else _EMPTY

    def delay_samples(self, engine_lag_48k: int) -> int:
        """The 16 kHz delay of the trip around an engine whose aligned output lags its input by
        at most ``engine_lag_48k`` samples: up's delay, then (engine + down's) / 3, rounded
        down (the down-sampler emits every 16 kHz sample whose input is complete)."""
        ratio = RATE_48K_HZ // RATE_HZ
        return self._up.delay_samples + (engine_lag_48k + self._down.delay_samples) // ratio
