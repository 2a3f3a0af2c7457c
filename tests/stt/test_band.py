"""Narrowband audio (a phone call) is told from a room's by its energy above 4 kHz, and only
its finals get the narrowband beam."""

from __future__ import annotations

import numpy as np
import pytest

from voxbus.audio import resample
from voxbus.services.stt.band import NARROWBAND_DB, final_beam, high_band_db

pytestmark = pytest.mark.fast


def _noise(seconds: float = 1.0) -> np.ndarray:
    return np.random.default_rng(7).normal(0, 0.1, int(16_000 * seconds)).astype(np.float32)


def test_a_phone_band_is_narrow_and_a_room_band_is_not() -> None:
    wide = _noise()
    narrow = resample(resample(wide, in_rate_hz=16_000, out_rate_hz=8_000), in_rate_hz=8_000,
                      out_rate_hz=16_000)
    assert high_band_db(wide) > -5 and high_band_db(narrow) < NARROWBAND_DB
    assert final_beam(narrow, 5) == 5
    assert final_beam(wide, 5) is None
    assert final_beam(narrow, 0) is None  # 0: the engine's own beam
    assert final_beam(narrow[:1000], 5) is None  # too short to tell
    assert high_band_db(np.zeros(16_000, np.float32)) == 0.0
