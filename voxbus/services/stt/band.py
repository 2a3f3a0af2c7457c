"""Narrowband audio (a phone call): how the finals of a turn heard through a phone are decoded.

A phone sends 8 kHz G.711, so nothing of the caller's voice above 4 kHz reaches the STT, whatever
carries it on (livekit-sip's Opus, the bridge's 16 kHz). Whisper tiny.en loses three times the
words on such audio (the hearing bench's phone channel: 0.15 against 0.04 on clean speech), and a
beam search wins a third of them back (0.10), more than it does on wideband speech. The band is
read off the turn's own audio, so it holds for any narrowband source, whatever the codec.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from voxbus.audio import Float32Array
from voxbus.services.stt.audio import WHISPER_RATE_HZ

#: Energy above 4.2 kHz against the 0.1-3.8 kHz band below which a turn is narrowband: the
#: hearing set measures -60 dB through a phone and -29 dB at the least through a room's Opus.
NARROWBAND_DB: Final = -45.0


def high_band_db(audio: Float32Array) -> float:
    """Energy above 4.2 kHz relative to the 0.1-3.8 kHz band (dB) of 16 kHz ``audio``."""
    power = np.abs(np.fft.rfft(np.asarray(audio, dtype=np.float32))) ** 2
    hz = np.fft.rfftfreq(audio.size, 1 / WHISPER_RATE_HZ)
    low = float(power[(hz > 100) & (hz < 3800)].sum())
    high = float(power[hz >= 4200].sum())
    if low <= 0.0:
        return 0.0  # silence: no band to speak of
    return 10.0 * float(np.log10(max(high, 1e-20) / low))


def final_beam(audio: Float32Array, narrowband_beam: int) -> int | None:
    """The beam a final of ``audio`` decodes with: ``narrowband_beam`` for narrowband audio
    (0: the engine's own), else None (the engine's own)."""
    if narrowband_beam < 1 or audio.size < WHISPER_RATE_HZ // 4:
        return None
    return narrowband_beam if high_band_db(audio) < NARROWBAND_DB else None
