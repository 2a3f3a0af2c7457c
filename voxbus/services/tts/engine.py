"""Text-to-speech engines behind one Protocol: Kokoro-82M (int8 ONNX, kokoro-onnx) and a fake.

``Synthesizer.synthesize`` BLOCKS for the whole forward pass (Kokoro is not autoregressive: a
unit's first sample exists only when the unit is done); callers run it in a thread.

Decisions:
- Text with nothing to pronounce (empty, whitespace, only punctuation or emoji) synthesizes to an
  EMPTY float32 array, not an error: a reply chunk like "..." or "🙂" is legitimate LLM output.
- Emoji and markdown markup are dropped before phonemization (see ``normalize``).
- Long text is not an error: kokoro-onnx splits the phonemes into batches of at most 510 (at
  sentence, clause, then word boundaries) and joins the audio. For latency, feed short units
  (see ``clauses``) anyway: one forward pass over the whole text is the time to first sample.
- Voices starting with ``bf_``/``bm_`` are phonemized as British English (``en-gb``), all others
  as American (``en-us``).
- A synthesis can be stopped from another thread (barge-in): pass an ``Abort`` and ``set()`` it.
  Kokoro's forward pass ends within a few milliseconds (onnxruntime's ``RunOptions.terminate``,
  checked between graph nodes; the slowest node measured here took about 100 ms) and
  ``synthesize`` raises ``SynthesisAborted``, so the cores are free for the next turn at once.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from voxbus.runtime.engine_thread import Abort

from .models import VOICES_DIR, ModelError, cache_dir, load_voices, resolve_model_path
from .normalize import speakable_text

if TYPE_CHECKING:
    from kokoro_onnx import Kokoro

SAMPLE_RATE_HZ: Final = 24_000
DEFAULT_VOICE: Final = "af_heart"
BRITISH_PREFIXES: Final = ("bf_", "bm_")
WARMUP_TEXT: Final = "Hello there, how can I help?"

_PROVIDER_ALIASES: Final[dict[str, tuple[str, ...]]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


class UnknownVoice(LookupError):
    """The requested voice is not loaded in this engine."""

    def __init__(self, voice: str, available: Iterable[str]) -> None:
        self.voice = voice
        self.available = tuple(available)
        super().__init__(f"unknown voice {voice!r}; available voices: {', '.join(self.available)}")

    def __str__(self) -> str:
        return str(self.args[0])


class SynthesisAborted(Exception):
    """The synthesis was stopped through its ``Abort``; there is no audio."""


@runtime_checkable
class Synthesizer(Protocol):
    """A blocking text-to-speech engine producing float32 mono audio."""

    @property
    def sample_rate_hz(self) -> int: ...

    @property
    def voices(self) -> tuple[str, ...]: ...

    @property
    def default_voice(self) -> str: ...

    def warmup(self) -> None:
        """Run one synthesis so the first real request does not pay for lazy initialisation."""
        ...

    def synthesize(
        self, text: str, voice: str | None = None, *, abort: Abort | None = None
    ) -> NDArray[np.float32]:
        """Audio for ``text`` (float32 mono at ``sample_rate_hz``); empty when nothing to say.

        ``voice=None`` means the default voice; an unknown voice raises ``UnknownVoice``.
        Setting ``abort`` (from another thread) stops it early with ``SynthesisAborted``.
        """
        ...


def lang_for_voice(voice: str) -> str:
    """espeak language for a Kokoro voice name: ``en-gb`` for ``bf_``/``bm_``, else ``en-us``."""
    return "en-gb" if voice.startswith(BRITISH_PREFIXES) else "en-us"


def check_voice(synth: Synthesizer, voice: str | None) -> str:
    """The voice to use: the default for ``None``; raises ``UnknownVoice`` if not loaded."""
    if voice is None:
        return synth.default_voice
    if voice not in synth.voices:
        raise UnknownVoice(voice, synth.voices)
    return voice


def voice_or_default(synth: Synthesizer, voice: str | None) -> str:
    """The voice if the engine has it, else the engine's default voice (never raises)."""
    return voice if voice is not None and voice in synth.voices else synth.default_voice


def onnx_providers(providers: str | Sequence[str]) -> tuple[str, ...]:
    """Expand ``"cpu"``/``"cuda"`` aliases to onnxruntime provider names (others pass through)."""
    names = (providers,) if isinstance(providers, str) else tuple(providers)
    expanded: list[str] = []
    for name in names:
        for provider in _PROVIDER_ALIASES.get(name.lower(), (name,)):
            if provider not in expanded:
                expanded.append(provider)
    if not expanded:
        raise ValueError("no onnxruntime execution provider given")
    return tuple(expanded)


def empty_audio() -> NDArray[np.float32]:
    return np.zeros(0, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class _Options:
    model_path: Path
    voices_dir: Path
    default_voice: str
    speed: float
    intra_op_threads: int
    inter_op_threads: int
    providers: tuple[str, ...]
    spin: bool


class KokoroEngine:
    """Kokoro-82M v1.0 int8 through kokoro-onnx on an onnxruntime session we configure.

    Loads the model and voices once, in the constructor (blocking, about half a second plus the
    model's sha256 check). Thread-safe: espeak runs under kokoro-onnx's lock, and onnxruntime
    sessions accept concurrent runs (on two cores, run one synthesis at a time).
    """

    def __init__(
        self,
        *,
        model_path: Path | str | None = None,
        voices_dir: Path | str | None = None,
        voices: Iterable[str] | None = None,
        default_voice: str = DEFAULT_VOICE,
        speed: float = 1.0,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        providers: str | Sequence[str] = "cpu",
        spin: bool = False,
        cache: Path | None = None,
    ) -> None:
        """Load Kokoro.

        ``model_path=None`` uses the model assembled and verified in the cache (``cache`` or
        ``models.cache_dir()``); an explicit path is used as is. ``voices`` selects which voice
        files of ``voices_dir`` to load (default: all). ``providers``: ``"cpu"`` (default),
        ``"cuda"`` (CUDA, CPU fallback) or onnxruntime provider names. ``spin=False`` stops
        onnxruntime's idle worker threads from busy-waiting, which would steal the cores that
        STT and the LLM share with TTS.
        """
        import onnxruntime as ort
        from kokoro_onnx import Kokoro

        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"speed must be within 0.5..2.0, got {speed}")
        if intra_op_threads < 1 or inter_op_threads < 1:
            raise ValueError("onnxruntime thread counts must be at least 1")
        cache_path = cache_dir() if cache is None else cache
        provider_names = onnx_providers(providers)
        missing = [p for p in provider_names if p not in ort.get_available_providers()]
        if missing:
            raise ValueError(
                f"onnxruntime providers {missing} are not available in this build "
                f"(available: {ort.get_available_providers()})"
            )
        self._opts = _Options(
            model_path=resolve_model_path(model_path, cache=cache_path),
            voices_dir=VOICES_DIR if voices_dir is None else Path(voices_dir),
            default_voice=default_voice,
            speed=speed,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            providers=provider_names,
            spin=spin,
        )
        self._voices = load_voices(self._opts.voices_dir, voices)
        if default_voice not in self._voices:
            raise UnknownVoice(default_voice, self._voices)

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        from onnxruntime.capi.onnxruntime_pybind11_state import (
            InvalidGraph,
            InvalidProtobuf,
            NoSuchFile,
        )

        try:
            session = ort.InferenceSession(
                str(self._opts.model_path), sess_options=options, providers=list(provider_names)
            )
        except (InvalidProtobuf, InvalidGraph, NoSuchFile):  # the file, not the code
            raise ModelError(f"onnxruntime cannot load {self._opts.model_path}: it is not an "
                             "ONNX model (or not a whole one)") from None
        self._session_providers: tuple[str, ...] = tuple(session.get_providers())
        voices_npz = _voices_npz(self._voices, cache_path)
        self._run = _RunOptionsLocal()
        self._kokoro: Kokoro = Kokoro.from_session(
            _AbortableSession(session, self._run), str(voices_npz)
        )

    @property
    def sample_rate_hz(self) -> int:
        return SAMPLE_RATE_HZ

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(self._voices)

    @property
    def default_voice(self) -> str:
        return self._opts.default_voice

    @property
    def model_path(self) -> Path:
        return self._opts.model_path

    @property
    def providers(self) -> tuple[str, ...]:
        """The execution providers the onnxruntime session actually uses."""
        return self._session_providers

    def warmup(self) -> None:
        self.synthesize(WARMUP_TEXT)

    def phonemize(self, text: str, voice: str | None = None) -> str:
        """The espeak phonemes Kokoro would speak for ``text`` in ``voice``'s language."""
        name = check_voice(self, voice)
        spoken = speakable_text(text)
        if not spoken:
            return ""
        return self._kokoro.tokenizer.phonemize(spoken, lang_for_voice(name))

    def synthesize(
        self, text: str, voice: str | None = None, *, abort: Abort | None = None
    ) -> NDArray[np.float32]:
        name = check_voice(self, voice)
        if abort is not None and abort.is_set():
            raise SynthesisAborted("aborted before it started")
        phonemes = self.phonemize(text, name)
        if not _pronounceable(phonemes):
            return empty_audio()
        if abort is None:
            return self._create(phonemes, name)
        import onnxruntime as ort

        run_options = ort.RunOptions()
        unregister = abort.on_set(lambda: setattr(run_options, "terminate", True))
        self._run.options = run_options
        try:
            return self._create(phonemes, name)
        except Exception as exc:
            if abort.is_set():
                raise SynthesisAborted("aborted during the forward pass") from exc
            raise
        finally:
            self._run.options = None
            unregister()

    def _create(self, phonemes: str, name: str) -> NDArray[np.float32]:
        audio, _ = self._kokoro.create(
            phonemes,
            voice=self._voices[name],
            speed=self._opts.speed,
            lang=lang_for_voice(name),
            is_phonemes=True,
        )
        return np.ascontiguousarray(audio, dtype=np.float32).reshape(-1)


class _RunOptionsLocal(threading.local):
    """The ``RunOptions`` of the synthesis running on the current thread, if it can be aborted."""

    options: Any = None


class _AbortableSession:
    """Hands kokoro-onnx our session, adding the current thread's ``RunOptions`` to every run
    (kokoro-onnx calls ``run(None, inputs)`` without any); everything else is delegated."""

    def __init__(self, session: Any, run: _RunOptionsLocal) -> None:
        self._session = session
        self._local = run

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, input_feed, run_options or self._local.options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def _pronounceable(phonemes: str) -> bool:
    # IPA symbols are letters (Ll/Lm); punctuation kept by espeak is not.
    return any(c.isalpha() for c in phonemes)


def _voices_npz(voices: dict[str, NDArray[np.float32]], cache: Path) -> Path:
    """kokoro-onnx loads its voices from an npz file; write ours once, content-addressed.

    We pass the voice arrays to ``create`` ourselves, so this file only satisfies the constructor.
    """
    digest = hashlib.sha256()
    for name in sorted(voices):
        digest.update(name.encode())
        digest.update(voices[name].tobytes())
    path = cache / f"kokoro-voices-{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".kokoro-voices.", suffix=".tmp", dir=cache)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **voices)  # type: ignore[arg-type]  # stub: **kwds may hit allow_pickle
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
