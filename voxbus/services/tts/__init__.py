"""Text-to-speech engine layer: Kokoro (int8 ONNX) behind a Protocol, units, frames.

Importing this package does not load onnxruntime or kokoro-onnx; ``KokoroEngine()`` does.
"""

from voxbus.runtime.engine_thread import Abort

from .clauses import Unit, UnitSplitter, iter_units, split_units
from .engine import (
    DEFAULT_VOICE,
    SAMPLE_RATE_HZ,
    KokoroEngine,
    SynthesisAborted,
    Synthesizer,
    UnknownVoice,
    check_voice,
    lang_for_voice,
    voice_or_default,
)
from .fake import FakeSynthesizer
from .framing import AudioFrame, frame_audio, snap_to_word, split_frames, to_pcm16
from .models import ModelError, cache_dir, ensure_model

__all__ = [
    "DEFAULT_VOICE",
    "SAMPLE_RATE_HZ",
    "Abort",
    "AudioFrame",
    "FakeSynthesizer",
    "KokoroEngine",
    "ModelError",
    "SynthesisAborted",
    "Synthesizer",
    "Unit",
    "UnitSplitter",
    "UnknownVoice",
    "cache_dir",
    "check_voice",
    "ensure_model",
    "frame_audio",
    "iter_units",
    "lang_for_voice",
    "snap_to_word",
    "split_frames",
    "split_units",
    "to_pcm16",
    "voice_or_default",
]
