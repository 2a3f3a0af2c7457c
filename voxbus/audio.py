"""Audio for every part of voxbus (the STT, the bridge, the harness): PCM16 decoding, down-mixing,
WAV files and the one resampler, numpy only.

The resampler is a windowed-sinc polyphase filter that keeps its own input history, so 20 ms frames
resample without edge artefacts and with about 1-2 ms of delay (libsoxr buffers 20-60 ms).
"""

from __future__ import annotations

import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]

MAX_RATE_HZ = 384_000
MAX_CHANNELS = 32


class PcmError(ValueError):
    """PCM bytes that cannot be decoded with the declared format."""


def pcm16_to_float32(data: bytes | bytearray | memoryview, *, channels: int = 1) -> Float32Array:
    """Decode interleaved PCM16 little-endian bytes to float32 in [-1, 1).

    Returns shape (frames,) for mono and (frames, channels) otherwise.
    Raises PcmError when the byte length is not a whole number of frames.
    """
    if not 1 <= channels <= MAX_CHANNELS:
        raise PcmError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
    raw = memoryview(data).cast("B")
    frame_bytes = 2 * channels
    if raw.nbytes % frame_bytes:
        raise PcmError(
            f"PCM16 with {channels} channel(s) needs a multiple of {frame_bytes} bytes, "
            f"got {raw.nbytes}"
        )
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) * np.float32(1 / 32768)
    return samples if channels == 1 else samples.reshape(-1, channels)


def float32_to_pcm16(audio: Float32Array) -> bytes:
    """Encode float32 samples (any shape, interleaved if 2-D) as PCM16 little-endian, clipping."""
    clipped = np.clip(np.rint(audio * 32768.0), -32768, 32767)
    return bytes(clipped.astype("<i2").tobytes())


def to_mono(audio: Float32Array) -> Float32Array:
    """Average the channels of a (frames, channels) array; a 1-D array is returned unchanged."""
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"expected 1-D or (frames, channels) audio, got shape {audio.shape}")
    if audio.shape[1] == 1:
        return np.ascontiguousarray(audio[:, 0])
    return np.asarray(audio.mean(axis=1), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Kernel:
    up: int
    down: int
    half: int  # taps each side, in input samples; also the streaming delay
    table: npt.NDArray[np.float32]  # (up, 2 * half): weights per output phase


def _design(in_rate_hz: int, out_rate_hz: int, zero_crossings: int, rolloff: float) -> _Kernel:
    g = math.gcd(in_rate_hz, out_rate_hz)
    up, down = out_rate_hz // g, in_rate_hz // g
    cutoff = rolloff * min(in_rate_hz, out_rate_hz) / 2  # Hz
    ratio = 2 * cutoff / in_rate_hz  # cutoff relative to the input Nyquist
    half_width = zero_crossings / ratio  # kernel half width, in input samples
    half = math.ceil(half_width)
    beta = 8.6  # Kaiser: about 80 dB stop band
    # Output phase j sits j/up of an input sample after its base input sample m0; tap k reads
    # input m0 - half + 1 + k, at distance d = j/up + half - 1 - k from the output instant.
    frac = np.arange(up, dtype=np.float64)[:, None] / up
    d = frac + (half - 1) - np.arange(2 * half, dtype=np.float64)[None, :]
    x = np.clip(d / half_width, -1.0, 1.0)
    window = np.i0(beta * np.sqrt(1.0 - x * x)) / np.i0(beta)
    window[np.abs(d) >= half_width] = 0.0
    taps = ratio * np.sinc(ratio * d) * window
    taps /= taps.sum(axis=1, keepdims=True)  # unity gain at DC for every phase
    return _Kernel(up=up, down=down, half=half, table=taps.astype(np.float32))


class Resampler:
    """Streaming mono resampler: feed chunks of any length, get the output that is ready.

    Output sample n is the input signal evaluated at time n / out_rate_hz, so the streams stay
    sample-aligned; a chunk's output lags its input by `delay_samples` input samples, which
    `flush()` releases at the end of the stream. One instance per stream; not thread-safe.
    """

    def __init__(
        self,
        *,
        in_rate_hz: int,
        out_rate_hz: int,
        zero_crossings: int = 16,
        rolloff: float = 0.92,
    ) -> None:
        for name, rate in (("in_rate_hz", in_rate_hz), ("out_rate_hz", out_rate_hz)):
            if not 1_000 <= rate <= MAX_RATE_HZ:
                raise ValueError(f"{name} must be 1000..{MAX_RATE_HZ}, got {rate}")
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._passthrough = in_rate_hz == out_rate_hz
        self._k = _design(in_rate_hz, out_rate_hz, zero_crossings, rolloff)
        # History of the input; _buf[0] is absolute input index _buf_start (negative = zeros).
        self._buf: Float32Array = np.zeros(self._k.half, dtype=np.float32)
        self._buf_start = -self._k.half
        self._in_total = 0
        self._out_next = 0
        self._flushed = False

    @property
    def delay_samples(self) -> int:
        """Input samples an output sample waits for after its instant (0 when passing through)."""
        return 0 if self._passthrough else self._k.half

    def process(self, audio: Float32Array) -> Float32Array:
        """Push a 1-D float32 chunk; return every output sample whose input is now complete."""
        if self._flushed:
            raise RuntimeError("Resampler already flushed")
        chunk = np.asarray(audio, dtype=np.float32)
        if chunk.ndim != 1:
            raise ValueError(f"Resampler takes mono 1-D audio, got shape {chunk.shape}")
        if self._passthrough:
            return chunk
        self._buf = np.concatenate((self._buf, chunk))
        self._in_total += chunk.size
        # Output n needs inputs up to floor(n * down / up) + half.
        last_ok = self._in_total - 1 - self._k.half
        n_end = -(-(last_ok + 1) * self._k.up // self._k.down) if last_ok >= 0 else 0
        return self._emit(n_end)

    def flush(self) -> Float32Array:
        """End of stream: return the remaining output (the input is padded with zeros)."""
        if self._flushed or self._passthrough:
            self._flushed = True
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        self._buf = np.concatenate((self._buf, np.zeros(self._k.half, dtype=np.float32)))
        n_end = -(-self._in_total * self._k.up // self._k.down)  # ceil(in * out / in_rate)
        return self._emit(n_end)

    def _emit(self, n_end: int) -> Float32Array:
        k = self._k
        if n_end <= self._out_next:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._out_next, n_end, dtype=np.int64)
        pos = n * k.down
        base = pos // k.up  # input index at or before each output instant
        phase = pos - base * k.up
        first = base - k.half + 1 - self._buf_start
        idx = first[:, None] + np.arange(2 * k.half, dtype=np.int64)[None, :]
        out: Float32Array = np.einsum("ij,ij->i", self._buf[idx], k.table[phase])
        self._out_next = n_end
        # Keep only the history the next output needs.
        next_base = (n_end * k.down) // k.up
        drop = next_base - k.half + 1 - self._buf_start
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return out


def resample(audio: Float32Array, *, in_rate_hz: int, out_rate_hz: int) -> Float32Array:
    """Resample a whole mono signal (one-shot form of `Resampler`)."""
    if in_rate_hz == out_rate_hz:
        return np.asarray(audio, dtype=np.float32)
    r = Resampler(in_rate_hz=in_rate_hz, out_rate_hz=out_rate_hz)
    return np.concatenate((r.process(audio), r.flush()))


class PcmConverter:
    """Per-stream converter: PCM16 bytes at any rate and channel count -> mono float32 at
    ``out_rate_hz``, resampled without edge artefacts between chunks."""

    def __init__(self, *, sample_rate_hz: int, channels: int = 1, out_rate_hz: int) -> None:
        if not 1 <= channels <= MAX_CHANNELS:
            raise PcmError(f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        self.sample_rate_hz = sample_rate_hz
        self.channels = channels
        self.out_rate_hz = out_rate_hz
        self._resampler = Resampler(in_rate_hz=sample_rate_hz, out_rate_hz=out_rate_hz)

    @property
    def delay_samples_out(self) -> float:
        """How far the output lags the input, in output samples."""
        return self._resampler.delay_samples * self.out_rate_hz / self.sample_rate_hz

    def push(self, pcm: bytes | bytearray | memoryview) -> Float32Array:
        return self._resampler.process(to_mono(pcm16_to_float32(pcm, channels=self.channels)))

    def flush(self) -> Float32Array:
        return self._resampler.flush()


@dataclass(frozen=True, slots=True)
class WavPcm:
    pcm: bytes
    sample_rate_hz: int
    channels: int


def read_wav(path: str | Path) -> WavPcm:
    """Read a PCM16 WAV file (stdlib `wave`)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise PcmError(f"{path}: only 16-bit PCM WAV is supported")
        return WavPcm(w.readframes(w.getnframes()), w.getframerate(), w.getnchannels())


def write_wav(path: str | Path, pcm: bytes, *, sample_rate_hz: int, channels: int = 1) -> None:
    """Write PCM16 little-endian bytes as a WAV file."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(pcm)


def load_wav(path: str | Path, *, out_rate_hz: int) -> Float32Array:
    """Read a PCM16 WAV of any rate/channels as mono float32 at ``out_rate_hz``."""
    wav = read_wav(path)
    mono = to_mono(pcm16_to_float32(wav.pcm, channels=wav.channels))
    return resample(mono, in_rate_hz=wav.sample_rate_hz, out_rate_hz=out_rate_hz)


def convert_pcm16(pcm: bytes, *, rate: int, channels: int, out_rate: int) -> bytes:
    """Whole PCM16 audio of any rate/layout as mono PCM16 at ``out_rate`` (one-shot)."""
    conv = PcmConverter(sample_rate_hz=rate, channels=channels, out_rate_hz=out_rate)
    return float32_to_pcm16(np.concatenate((conv.push(pcm), conv.flush())))
