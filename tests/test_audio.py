from __future__ import annotations

import numpy as np
import pytest

from voxbus.audio import (
    PcmConverter,
    PcmError,
    Resampler,
    float32_to_pcm16,
    pcm16_to_float32,
    resample,
    to_mono,
)
from voxbus.services.stt.audio import WHISPER_RATE_HZ

pytestmark = pytest.mark.fast

COMMON_RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)


def tone(freq_hz: float, rate_hz: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(rate_hz * seconds)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def test_pcm16_decodes_little_endian_to_unit_range() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    out = pcm16_to_float32(pcm)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -1.0, 32767 / 32768])


def test_pcm16_round_trip() -> None:
    x = np.linspace(-0.9, 0.9, 101, dtype=np.float32)
    np.testing.assert_allclose(pcm16_to_float32(float32_to_pcm16(x)), x, atol=1 / 32768)


def test_interleaved_stereo_becomes_frames_by_channels_then_mono() -> None:
    frames = np.array([[1000, 3000], [-2000, 0]], dtype="<i2")
    stereo = pcm16_to_float32(frames.tobytes(), channels=2)
    assert stereo.shape == (2, 2)
    np.testing.assert_allclose(to_mono(stereo) * 32768, [2000, -1000])


@pytest.mark.parametrize(("n_bytes", "channels"), [(3, 1), (1, 1), (6, 2), (10, 4)])
def test_odd_or_partial_frames_raise_pcm_error(n_bytes: int, channels: int) -> None:
    with pytest.raises(PcmError, match="multiple of"):
        pcm16_to_float32(b"\x01" * n_bytes, channels=channels)


def test_pcm_error_is_a_value_error_and_bad_channel_count_is_rejected() -> None:
    assert issubclass(PcmError, ValueError)
    with pytest.raises(PcmError):
        pcm16_to_float32(b"", channels=0)
    with pytest.raises(PcmError):
        PcmConverter(sample_rate_hz=48_000, channels=0, out_rate_hz=WHISPER_RATE_HZ)


def test_streaming_converter_rejects_a_corrupt_frame() -> None:
    conv = PcmConverter(sample_rate_hz=48_000, channels=2, out_rate_hz=WHISPER_RATE_HZ)
    with pytest.raises(PcmError):
        conv.push(b"\x00" * 3838)  # 20 ms of 48 kHz stereo is 3840 bytes


@pytest.mark.parametrize("rate", COMMON_RATES)
def test_resampled_tone_keeps_frequency_and_level(rate: int) -> None:
    y = resample(tone(1000, rate), in_rate_hz=rate, out_rate_hz=16_000)
    assert y.size == 16_000
    ref = tone(1000, 16_000)
    core = slice(1000, -1000)  # away from the zero-padded ends
    err = y[core] - ref[core]
    snr_db = 20 * np.log10(np.std(ref[core]) / max(float(np.std(err)), 1e-12))
    assert snr_db > 60


@pytest.mark.parametrize("rate", [r for r in COMMON_RATES if r > 16_000])
def test_content_above_8khz_does_not_alias(rate: int) -> None:
    y = resample(tone(10_000, rate), in_rate_hz=rate, out_rate_hz=16_000)
    assert 20 * np.log10(np.std(y[1000:-1000]) / np.std(tone(10_000, rate))) < -60


@pytest.mark.parametrize("rate", COMMON_RATES)
def test_chunked_resampling_equals_one_shot(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = rng.normal(0, 0.1, rate * 2).astype(np.float32)
    whole = resample(x, in_rate_hz=rate, out_rate_hz=16_000)
    r = Resampler(in_rate_hz=rate, out_rate_hz=16_000)
    frame = rate // 50  # 20 ms
    parts = [r.process(x[i : i + frame]) for i in range(0, x.size, frame)]
    chunked = np.concatenate([*parts, r.flush()])
    assert chunked.size == whole.size == 32_000
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    assert r.delay_samples <= rate // 400  # streaming delay under 2.5 ms


def test_irregular_chunks_and_empty_chunks() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.1, 44_100).astype(np.float32)
    r = Resampler(in_rate_hz=44_100, out_rate_hz=16_000)
    sizes = [0, 1, 7, 441, 0, 3000, 12_345]
    parts, i = [], 0
    for n in sizes:
        parts.append(r.process(x[i : i + n]))
        i += n
    parts.append(r.process(x[i:]))
    parts.append(r.flush())
    whole = resample(x, in_rate_hz=44_100, out_rate_hz=16_000)
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-6)
    with pytest.raises(RuntimeError):
        r.process(x[:10])


def test_48k_stereo_pcm_to_16k_mono_stream() -> None:
    left = tone(440, 48_000)
    stereo = np.stack([left, left], axis=1)
    pcm = float32_to_pcm16(stereo)
    conv = PcmConverter(sample_rate_hz=48_000, channels=2, out_rate_hz=WHISPER_RATE_HZ)
    frame = 48_000 // 50 * 4  # bytes in 20 ms of stereo PCM16
    out = np.concatenate(
        [conv.push(pcm[i : i + frame]) for i in range(0, len(pcm), frame)] + [conv.flush()]
    )
    assert out.size == 16_000
    ref = tone(440, 16_000)
    assert np.max(np.abs(out[500:-500] - ref[500:-500])) < 1e-3
    assert conv.delay_samples_out < 20


def test_16k_mono_passes_through_unchanged() -> None:
    x = tone(300, 16_000)
    r = Resampler(in_rate_hz=16_000, out_rate_hz=16_000)
    assert r.delay_samples == 0
    np.testing.assert_array_equal(r.process(x), x)
    assert r.flush().size == 0


def test_bad_rates_and_shapes() -> None:
    with pytest.raises(ValueError):
        Resampler(in_rate_hz=0, out_rate_hz=16_000)
    with pytest.raises(ValueError):
        stereo = np.zeros((10, 2), dtype=np.float32)
        Resampler(in_rate_hz=48_000, out_rate_hz=16_000).process(stereo)
    with pytest.raises(ValueError):
        to_mono(np.zeros((2, 2, 2), dtype=np.float32))
