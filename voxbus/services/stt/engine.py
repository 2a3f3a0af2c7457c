"""Speech-to-text engines behind one Protocol: faster-whisper, and a scripted fake for tests.

Every method here BLOCKS (model load, warmup, decode): call them from a worker thread, e.g.
`await asyncio.to_thread(engine.transcribe, audio)`. `transcribe` consumes faster-whisper's lazy
segment generator inside the call, so no decoding is left to whoever iterates the result.
One engine serves one call at a time (CTranslate2 runs one decode per worker); give each worker
thread its own engine, or serialise calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from voxbus.audio import Float32Array
from voxbus.errors import UserError
from voxbus.services.stt.audio import WHISPER_RATE_HZ
from voxbus.services.stt.band import final_beam
from voxbus.services.stt.models import DEFAULT_MODEL, resolve_model_dir
from voxbus.services.stt.window import ShortWindow

Device = Literal["cpu", "cuda"]
# float32 on CPU: int8 results depend on the CPU's int8 kernels (see WhisperEngine).
DEFAULT_COMPUTE_TYPE: dict[str, str] = {"cpu": "float32", "cuda": "float16"}


@dataclass(frozen=True, slots=True, kw_only=True)
class TranscriptResult:
    text: str
    decode_s: float  # wall time of the whole decode, generator fully consumed
    audio_s: float  # length of the audio that was decoded
    partial: bool = False
    language: str = "en"
    avg_logprob: float | None = None  # mean over segments; None when nothing was decoded
    no_speech_prob: float | None = None  # max over segments
    window_s: float = 30.0  # the mel window it was encoded in (``window``)
    #: Each word's (start, end), seconds from the start of the audio; None: not measured (only
    #: partials of an engine made with ``partial_words`` measure it).
    words: tuple[tuple[float, float], ...] | None = None
    #: A final of narrowband audio (a phone call), decoded with the engine's narrowband beam.
    narrowband: bool = False

    def speech(self, no_speech_threshold: float) -> str:
        """The text, or "" when Whisper took the audio for noise: its no-speech probability
        above ``no_speech_threshold`` and its average log probability under -1."""
        nsp, logprob = self.no_speech_prob, self.avg_logprob
        if nsp is not None and nsp > no_speech_threshold and (logprob is None or logprob < -1.0):
            return ""
        return self.text.strip()


@runtime_checkable
class Transcriber(Protocol):
    """A blocking speech-to-text engine for 16 kHz mono float32 audio."""

    def warmup(self) -> None: ...

    def transcribe(self, audio: Float32Array, *, partial: bool = False) -> TranscriptResult: ...


def _check_audio(audio: Float32Array) -> Float32Array:
    arr = np.asarray(audio)
    if arr.ndim != 1:
        raise ValueError(f"expected 16 kHz mono 1-D audio, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


@dataclass(frozen=True, slots=True, kw_only=True)
class _WhisperOptions:
    model_dir: Path
    device: Device
    compute_type: str
    cpu_threads: int
    language: str | None
    beam_size: int
    temperatures: tuple[float, ...]
    initial_prompt: str | None
    partial_max_new_tokens: int | None
    short_window_s: float
    partial_words: bool
    short_window_margin_s: float
    narrowband_beam_size: int


class WhisperEngine:
    """faster-whisper (CTranslate2) Whisper. The model is loaded once, in the constructor.

    Finals decode with a beam search of `beam_size` (1: greedy), no timestamps, no VAD filter and no
    conditioning on earlier text. An utterance up to ``short_window_s - short_window_margin_s``
    long is encoded in a ``short_window_s`` window instead of 30 s (``window``; 0: never).
    Partials are cheaper: one temperature, no fallback re-decodes, and at most
    `partial_max_new_tokens` tokens. With ``partial_words`` a partial on the short window also
    says where each word is (``TranscriptResult.words``). A final of narrowband audio (a phone
    call, ``band``) searches with ``narrowband_beam_size`` (0: ``beam_size``).

    On CPU the default compute type is float32 (the int8 weights are dequantized at load).
    int8 is about 20% faster but not reproducible across machines: CTranslate2 and oneDNN pick
    the int8 kernels by CPU feature (AVX-512 VNNI, AVX2's saturating ``vpmaddubsw``, MKL on
    Intel), and those round differently, enough to flip a greedy decode ("Can you book a table"
    on one machine, "Can you work at table" on another, for the same audio). float32 kernels
    differ only in the last bits. Same audio, same machine: the same text either way.
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: Device = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 2,
        language: str | None = "en",
        beam_size: int = 1,
        temperatures: Sequence[float] = (0.0,),
        initial_prompt: str | None = None,
        partial_max_new_tokens: int | None = 64,
        short_window_s: float = 12.0,
        short_window_margin_s: float = 2.0,
        partial_words: bool = False,
        narrowband_beam_size: int = 0,
        cache_dir: Path | None = None,
    ) -> None:
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if cpu_threads < 1:
            raise ValueError("cpu_threads must be >= 1")
        if beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not temperatures:
            raise ValueError("temperatures must not be empty")
        from faster_whisper import WhisperModel  # heavy import, deferred to construction

        self._opts = _WhisperOptions(
            model_dir=resolve_model_dir(model, cache_dir=cache_dir),
            device=device,
            compute_type=compute_type or DEFAULT_COMPUTE_TYPE[device],
            cpu_threads=cpu_threads,
            language=language,
            beam_size=beam_size,
            temperatures=tuple(temperatures),
            initial_prompt=initial_prompt,
            partial_max_new_tokens=partial_max_new_tokens,
            short_window_s=short_window_s,
            short_window_margin_s=short_window_margin_s,
            partial_words=partial_words,
            narrowband_beam_size=narrowband_beam_size,
        )
        started = time.perf_counter()
        try:
            self._model: Any = WhisperModel(
                str(self._opts.model_dir),
                device=device,
                compute_type=self._opts.compute_type,
                cpu_threads=cpu_threads,
                num_workers=1,
                local_files_only=True,
            )
        except RuntimeError as e:  # CTranslate2: the files (or the device) it was given
            raise UserError(f"CTranslate2 cannot load the Whisper model in "
                            f"{self._opts.model_dir}: {e}") from None
        self.load_s = time.perf_counter() - started
        self.multilingual = bool(self._model.model.is_multilingual)
        if not self.multilingual and language not in (None, "en"):
            raise UserError(f"the Whisper model {model!r} is English-only: it cannot "
                            f"transcribe language {language!r} (STT_LANGUAGE)")
        self._short: ShortWindow | None = None
        if short_window_s > 0:
            self._short = ShortWindow(self._model, window_s=short_window_s,
                                      margin_s=short_window_margin_s, language=language,
                                      initial_prompt=initial_prompt)
        #: Short-window decodes that came out repetitive (or, for a final, unsure) and were
        #: decoded again on 30 s.
        self.window_fallbacks = 0

    @property
    def model_dir(self) -> Path:
        return self._opts.model_dir

    def warmup(self) -> None:
        """Run one decode on 1 s of faint noise so the first real request pays no first-run cost."""
        rng = np.random.default_rng(0)
        self.transcribe(rng.normal(0.0, 1e-3, WHISPER_RATE_HZ).astype(np.float32))

    def transcribe(self, audio: Float32Array, *, partial: bool = False) -> TranscriptResult:
        """Decode 16 kHz mono float32 audio completely and return the text. Blocking."""
        samples = _check_audio(audio)
        if samples.size == 0:
            return TranscriptResult(text="", decode_s=0.0, audio_s=0.0, partial=partial)
        o = self._opts
        started = time.perf_counter()
        narrow = None if partial else final_beam(samples, o.narrowband_beam_size)
        beam = 1 if partial else (narrow or o.beam_size)
        if self._short is not None and self._short.fits(samples.size):
            short = self._short.decode(
                samples, beam_size=beam,
                temperatures=(0.0,) if partial else o.temperatures,
                max_new_tokens=o.partial_max_new_tokens if partial else None,
                align=partial and o.partial_words)
            if not short.repetitive and (partial or not short.unsure):
                return TranscriptResult(
                    text=short.text, decode_s=time.perf_counter() - started,
                    audio_s=samples.size / WHISPER_RATE_HZ, partial=partial,
                    language=o.language or "en", avg_logprob=short.avg_logprob,
                    no_speech_prob=short.no_speech_prob, window_s=o.short_window_s,
                    words=short.words, narrowband=narrow is not None)
            self.window_fallbacks += 1
        segments, info = self._model.transcribe(
            samples,
            language=o.language,
            beam_size=beam,
            best_of=1,
            temperature=0.0 if partial else list(o.temperatures),
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
            initial_prompt=o.initial_prompt,
            max_new_tokens=o.partial_max_new_tokens if partial else None,
            log_progress=False,
        )
        # Consume the lazy generator here, in the caller's thread: this is where decoding runs.
        done = list(segments)
        decode_s = time.perf_counter() - started
        return _result(done, info, samples.size, decode_s, partial, narrowband=narrow is not None)


def _result(
    segments: Iterable[Any], info: Any, n_samples: int, decode_s: float, partial: bool,
    *, narrowband: bool = False,
) -> TranscriptResult:
    segs = list(segments)
    text = "".join(str(s.text) for s in segs).strip()
    return TranscriptResult(
        text=text,
        decode_s=decode_s,
        audio_s=n_samples / WHISPER_RATE_HZ,
        partial=partial,
        language=str(info.language),
        avg_logprob=float(np.mean([s.avg_logprob for s in segs])) if segs else None,
        no_speech_prob=max(float(s.no_speech_prob) for s in segs) if segs else None,
        narrowband=narrowband,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ScriptedReply:
    """What FakeTranscriber returns for one call: the text and how long it 'decodes'."""

    text: str
    decode_s: float = 0.0
    words: tuple[tuple[float, float], ...] | None = None


@dataclass(slots=True)
class FakeTranscriber:
    """Scripted Transcriber for control-flow tests.

    Replies are taken in order (the last one repeats; with none, `default_text`). With
    `sleep=True` a call blocks for the reply's decode_s, as a real engine would; otherwise it
    returns at once and only reports decode_s. Every call is recorded in `calls`.
    """

    replies: list[ScriptedReply] = field(default_factory=list)
    default_text: str = ""
    sleep: bool = False
    warmed_up: bool = False
    calls: list[tuple[int, bool]] = field(default_factory=list)  # (n_samples, partial)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, init=False, repr=False, compare=False
    )

    @classmethod
    def of(cls, *texts: str, decode_s: float = 0.0, sleep: bool = False) -> FakeTranscriber:
        return cls(replies=[ScriptedReply(text=t, decode_s=decode_s) for t in texts], sleep=sleep)

    def warmup(self) -> None:
        self.warmed_up = True

    def transcribe(self, audio: Float32Array, *, partial: bool = False) -> TranscriptResult:
        samples = _check_audio(audio)
        with self._lock:
            index = len(self.calls)
            self.calls.append((samples.size, partial))
        if self.replies:
            reply = self.replies[min(index, len(self.replies) - 1)]
        else:
            reply = ScriptedReply(text=self.default_text)
        if self.sleep and reply.decode_s > 0:
            time.sleep(reply.decode_s)
        return TranscriptResult(
            text=reply.text,
            decode_s=reply.decode_s,
            audio_s=samples.size / WHISPER_RATE_HZ,
            partial=partial,
            words=reply.words if partial else None,
        )
