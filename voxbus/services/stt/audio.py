"""The STT's audio format: 16 kHz mono float32, what Whisper and Silero take."""

from __future__ import annotations

from pathlib import Path

from voxbus.audio import Float32Array, load_wav

WHISPER_RATE_HZ = 16_000


def load_wav_16k_mono(path: str | Path) -> Float32Array:
    """Read a PCM16 WAV of any rate/channels and return 16 kHz mono float32."""
    return load_wav(path, out_rate_hz=WHISPER_RATE_HZ)
