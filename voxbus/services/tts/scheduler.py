"""The worker-wide synthesis bound: ``workers`` threads run forward passes, earliest deadline first.

On two cores one forward pass at a time (with two onnxruntime threads) is fastest; more at once
only slows every one of them. The queue is ordered by a deadline the caller gives (when the unit's
audio will be needed), so the first unit of a new reply goes before the third sentence of a reply
that still has seconds of audio to play.

The threads are a ``runtime.engine_thread.EngineThread``. A caller that stops waiting (a cancelled
handler: barge-in) aborts its job: a queued job is skipped, a running one is stopped through the
engine's ``Abort`` and its result is discarded.

Short units ("Sure,", "Okay.") recur across replies and sessions: their audio is kept in a small
LRU cache (``cache_entries``, texts up to ``cache_max_chars``) and reused without a forward pass.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

from voxbus.runtime.engine_thread import Abort, EngineClosed, EngineThread

from .engine import SynthesisAborted, Synthesizer

log = structlog.get_logger("voxbus.tts.scheduler")


@dataclass(frozen=True, slots=True)
class Synthesis:
    audio: NDArray[np.float32]
    synth_s: float  # the forward pass (0 for a cache hit)
    queued_s: float  # waiting for a synthesis thread
    cached: bool = False


@dataclass(slots=True)
class SchedulerStats:
    units: int = 0
    synth_s: float = 0.0
    audio_s: float = 0.0
    aborted: int = 0
    cache_hits: int = 0

    @property
    def rtf(self) -> float:
        """Forward-pass time per second of audio (below 1: faster than real time)."""
        return self.synth_s / self.audio_s if self.audio_s else float("nan")


class SynthScheduler:
    def __init__(
        self,
        engine: Synthesizer,
        *,
        workers: int = 1,
        cache_entries: int = 0,
        cache_max_chars: int = 0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.engine = engine
        self.stats = SchedulerStats()
        self._workers = workers
        self._thread: EngineThread | None = None
        self._cache: OrderedDict[tuple[str, str], NDArray[np.float32]] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_max_chars = cache_max_chars

    def start(self) -> None:
        self._thread = EngineThread("tts-synth", workers=self._workers)

    async def close(self) -> None:
        """Abort queued and running jobs and wait for the threads to end."""
        if self._thread is not None:
            await self._thread.close()

    def queued(self) -> int:
        return self._thread.queued() if self._thread is not None else 0

    async def synthesize(self, text: str, voice: str, *, deadline: float) -> Synthesis:
        """Audio for ``text``; ``deadline`` (``time.monotonic`` scale) orders the queue.

        Raises ``SynthesisAborted`` when the scheduler closes; cancelling the caller aborts the
        job. Engine errors propagate.
        """
        key = (voice, text)
        if (hit := self._cache_get(key)) is not None:
            self.stats.cache_hits += 1
            return Synthesis(hit, 0.0, 0.0, cached=True)
        if self._thread is None:
            raise SynthesisAborted("the scheduler is not running")
        engine = self.engine

        def run(abort: Abort) -> NDArray[np.float32]:
            try:
                return engine.synthesize(text, voice, abort=abort)
            except SynthesisAborted:
                self.stats.aborted += 1  # a running pass stopped (barge-in or close)
                raise

        try:
            handle = self._thread.submit(run, deadline=deadline)
            audio = await handle
        except EngineClosed as e:
            raise SynthesisAborted("the scheduler is closing") from e
        self.stats.units += 1
        self.stats.synth_s += handle.ran_s
        self.stats.audio_s += audio.size / engine.sample_rate_hz
        self._cache_put(key, audio)
        return Synthesis(audio, handle.ran_s, handle.queued_s)

    # -- cache ---------------------------------------------------------------------------------

    def _cacheable(self, text: str) -> bool:
        return self._cache_entries > 0 and len(text) <= self._cache_max_chars

    def _cache_get(self, key: tuple[str, str]) -> NDArray[np.float32] | None:
        if not self._cacheable(key[1]):
            return None
        audio = self._cache.get(key)
        if audio is not None:
            self._cache.move_to_end(key)
        return audio

    def _cache_put(self, key: tuple[str, str], audio: NDArray[np.float32]) -> None:
        if not self._cacheable(key[1]):
            return
        frozen = audio.copy()
        frozen.flags.writeable = False
        self._cache[key] = frozen
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
