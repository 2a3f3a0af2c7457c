"""RNNoise (Valin 2018; BSD-3-Clause): ``librnnoise.so`` out of ``pyrnnoise==0.4.5``, called
through ctypes. The package's Python wrapper is not imported (it pulls in audiolab and its
decoders); only its shared library is loaded. 48 kHz, 480-sample frames, int16-scaled floats;
the output lags the input by 960 samples (20 ms, measured), trimmed here, so with the frame and
the trip to 48 kHz and back the delay is 515 samples at 16 kHz (32.2 ms)."""

from __future__ import annotations

import ctypes
import importlib.util
from pathlib import Path
from typing import Final

import numpy as np

from voxbus.audio import Float32Array
from voxbus.errors import UserError
from voxbus.services.stt.denoise.stream import FixedDelayDenoiser, Via48k

PIN: Final = "pyrnnoise==0.4.5"
FRAME_48K: Final = 480
LAG_48K: Final = 960
_SCALE: Final = 32768.0

_lib: ctypes.CDLL | None = None


def _library() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        spec = importlib.util.find_spec("pyrnnoise")  # found, not imported
        path = (Path(next(iter(spec.submodule_search_locations))) / "librnnoise.so"
                if spec is not None and spec.submodule_search_locations else None)
        if path is None or not path.is_file():
            raise UserError(f"denoiser 'rnnoise' needs its package: pip install {PIN} "
                            "(or pip install -e '.[denoise]')")
        lib = ctypes.CDLL(str(path))
        lib.rnnoise_create.argtypes = [ctypes.c_void_p]
        lib.rnnoise_create.restype = ctypes.c_void_p
        lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
        lib.rnnoise_destroy.restype = None
        lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float),
                                              ctypes.POINTER(ctypes.c_float)]
        lib.rnnoise_process_frame.restype = ctypes.c_float
        lib.rnnoise_get_frame_size.restype = ctypes.c_int
        if (size := lib.rnnoise_get_frame_size()) != FRAME_48K:
            raise RuntimeError(f"{path}: frames of {size} samples, expected {FRAME_48K}")
        _lib = lib
    return _lib


class RnnoiseDenoiser(FixedDelayDenoiser):
    """One RNNoise state (freed with the object)."""

    def __init__(self) -> None:
        self._lib = _library()
        self._state: int | None = None
        self._via = Via48k()
        self._in = np.zeros(FRAME_48K, dtype=np.float32)
        self._out = np.zeros(FRAME_48K, dtype=np.float32)
        self._in_ptr = self._in.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        super().__init__(self._via.delay_samples(LAG_48K + FRAME_48K - 1))
        self._reset_core()

    def _reset_core(self) -> None:
        self._free()
        self._state = self._lib.rnnoise_create(None)
        if not self._state:
            raise MemoryError("rnnoise_create failed")
        self._via.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._to_trim = LAG_48K

    def _core(self, chunk: Float32Array) -> Float32Array:
        up = self._via.up(chunk)
        x = np.concatenate((self._pending, up)) if self._pending.size else up
        n = x.size // FRAME_48K
        self._pending = x[n * FRAME_48K:].copy()
        out = np.empty(n * FRAME_48K, dtype=np.float32)
        for i in range(n):
            np.multiply(x[i * FRAME_48K:(i + 1) * FRAME_48K], _SCALE, out=self._in)
            self._lib.rnnoise_process_frame(self._state, self._out_ptr, self._in_ptr)
            np.multiply(self._out, 1 / _SCALE, out=out[i * FRAME_48K:(i + 1) * FRAME_48K])
        if self._to_trim:
            cut = min(self._to_trim, out.size)
            self._to_trim -= cut
            out = out[cut:]
        return self._via.down(out)

    def _free(self) -> None:
        if getattr(self, "_state", None):
            self._lib.rnnoise_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self._free()
