"""Decoding off the event loop: an engine on its own engine thread (one decode at a time),
optionally at low thread priority so a decode elsewhere in the process takes the CPU from it."""

from __future__ import annotations

import time
from collections.abc import Callable

from voxbus.audio import Float32Array
from voxbus.runtime.engine_thread import EngineThread, JobHandle
from voxbus.services.stt.engine import Transcriber, TranscriptResult, WhisperEngine
from voxbus.services.stt.settings import SttSettings


def build_engine(settings: SttSettings, *, partial: bool = False) -> WhisperEngine:
    """Load the configured Whisper model (blocking), for finals or (``partial``) for partials.
    CTranslate2's compute threads inherit the priority of the thread that calls this."""
    s = settings
    compute_type = s.compute_type
    if partial:
        compute_type = s.partial_compute_type or ("int8" if s.device == "cpu" else compute_type)
    return WhisperEngine(model=s.model, device=s.device, compute_type=compute_type,
                         cpu_threads=s.cpu_threads, language=s.language, beam_size=s.beam_size,
                         short_window_s=s.window_s, short_window_margin_s=s.window_margin_s,
                         partial_words=s.words_pause_ms > 0,
                         narrowband_beam_size=s.narrowband_beam_size)


class Decoder:
    """An engine on its own ``EngineThread``: one decode at a time, in the order asked.

    A decode whose caller is cancelled (a discarded speculative final) still finishes in its
    thread (CTranslate2 cannot stop one) and keeps the decoder ``busy`` until then, so nothing
    slips in and queues behind it. With ``nice`` > 0 the thread runs at lower priority, and so do
    CTranslate2's compute threads when ``load`` builds the engine there: a final decoding
    meanwhile takes the CPU from it.
    """

    def __init__(self, *, name: str, nice: int = 0) -> None:
        self.name = name
        self._thread = EngineThread(name, nice=nice)
        self._engine: Transcriber | None = None

    @property
    def engine(self) -> Transcriber:
        if self._engine is None:
            raise RuntimeError(f"decoder {self.name} has no engine")
        return self._engine

    @property
    def busy(self) -> bool:
        """A decode runs or waits here."""
        return self._thread.busy

    def use(self, engine: Transcriber) -> None:
        self._engine = engine

    async def load(self, factory: Callable[[], Transcriber]) -> float:
        """Build the engine on this decoder's thread; returns the seconds it took."""
        started = time.perf_counter()
        self._engine = await self._thread.run(lambda _abort: factory())
        return time.perf_counter() - started

    async def warmup(self) -> float:
        started = time.perf_counter()
        engine = self.engine
        await self._thread.run(lambda _abort: engine.warmup())
        return time.perf_counter() - started

    def submit(self, audio: Float32Array, *, partial: bool) -> JobHandle[TranscriptResult]:
        """Queue a decode now (``if not d.busy: d.submit(...)`` cannot race); await the handle."""
        engine = self.engine
        return self._thread.submit(lambda _abort: engine.transcribe(audio, partial=partial))

    async def run(self, audio: Float32Array, *, partial: bool) -> TranscriptResult:
        return await self.submit(audio, partial=partial)

    async def close(self) -> None:
        await self._thread.close()
