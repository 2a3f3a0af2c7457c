"""Smart Turn v3.2: Pipecat's open audio end-of-turn model, asked whether a pause ends the turn.

The model (``smart-turn-v3.2-cpu.onnx``, BSD-2-Clause, Daily) is taken out of the
``pipecat-ai==1.14.0`` wheel at setup (``python -m voxbus.services.stt.smart_turn fetch``:
the wheel is downloaded without its dependencies, the one file extracted and checked against its
sha256, the licence kept next to it); pipecat itself is never installed. It reads the last 8 s
of the utterance (zero-padded in front), normalised to zero mean and unit variance, as 80 Whisper
log-mel bins (faster-whisper's feature extractor), and returns the probability that the turn is
complete. About 80-100 ms per call on one thread here.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any, Final

import numpy as np

from voxbus.audio import Float32Array
from voxbus.runtime.checksums import file_sha256
from voxbus.services.stt.audio import WHISPER_RATE_HZ
from voxbus.services.stt.models import (
    ModelIntegrityError,
    ModelNotFoundError,
    cache_root,
    fetch_main,
    files_from_wheel,
)

WHEEL: Final = "pipecat-ai==1.14.0"
MEMBER: Final = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
LICENSE_MEMBER: Final = "pipecat_ai-1.14.0.dist-info/licenses/LICENSE"
MODEL_FILE: Final = "smart-turn-v3.2-cpu.onnx"
MODEL_SHA256: Final = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
MODEL_SIZE: Final = 8_679_182
WINDOW_S: Final = 8


def model_path(cache: Path | None = None) -> Path:
    return (cache or cache_root()) / "smart-turn" / MODEL_FILE



def check_model(cache: Path | None = None) -> Path:
    """The verified model file; ``ModelNotFoundError`` (with what to run) if it is missing."""
    path = model_path(cache)
    if not path.is_file():
        raise ModelNotFoundError(
            f"the Smart Turn model is not at {path}: run ./dev setup (or python -m "
            "voxbus.services.stt.smart_turn fetch), or set STT_TURN_MODEL=silence")
    if path.stat().st_size != MODEL_SIZE:
        raise ModelIntegrityError(f"{path} is {path.stat().st_size} bytes, not {MODEL_SIZE}")
    return path


def fetch(cache: Path | None = None) -> Path:
    """Download the pipecat-ai wheel (no dependencies) and extract the model and its licence."""
    target = model_path(cache)
    if target.is_file() and file_sha256(target) == MODEL_SHA256:
        return target
    files_from_wheel(WHEEL, "pipecat_ai-*.whl", {
        target: (MEMBER, MODEL_SHA256), target.parent / "LICENSE": (LICENSE_MEMBER, None)})
    return target


class SmartTurn:
    """The model on its own onnxruntime session (blocking calls; one at a time)."""

    def __init__(self, path: Path | None = None, *, threads: int = 1) -> None:
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(str(path or check_model()),
                                                  sess_options=options,
                                                  providers=["CPUExecutionProvider"])
        self._features = FeatureExtractor(feature_size=80, chunk_length=WINDOW_S)
        self._lock = threading.Lock()
        self.calls = 0

    def features(self, audio: Float32Array) -> Float32Array:
        n = WINDOW_S * WHISPER_RATE_HZ
        x = np.asarray(audio, dtype=np.float32)[-n:]
        x = np.pad(x, (n - x.size, 0)) if x.size < n else x
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        mel = self._features(x, padding=0)
        return np.ascontiguousarray(mel[:, : n // 160], dtype=np.float32)

    def complete_probability(self, audio: Float32Array) -> float:
        """The probability that the utterance ending with ``audio`` is a complete turn."""
        feats = self.features(audio)[np.newaxis]
        with self._lock:
            self.calls += 1
            out = self._session.run(None, {"input_features": feats})
        return float(np.asarray(out[0]).reshape(-1)[0])


def main(argv: list[str]) -> int:
    return fetch_main("voxbus.services.stt.smart_turn", "Smart Turn v3.2", fetch, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
