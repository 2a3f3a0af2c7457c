"""The worker-wide synthesis bound: ``workers`` threads run forward passes, earliest deadline first.

On two cores one forward pass at a time (with two onnxruntime threads) is fastest; more at once
only slows every one of them. The queue is ordered by a deadline the caller gives (when the unit's
audio will be needed), so the first unit of a new reply goes before the third sentence of a reply
that still has seconds of audio to play.

A caller that stops waiting (a cancelled handler: barge-in) aborts its job: a queued job is
skipped, a running one is stopped through the engine's ``Abort`` and its result is discarded.

Short units ("Sure,", "Okay.") recur across replies and sessions: their audio is kept in a small
LRU cache (``cache_entries``, texts up to ``cache_max_chars``) and reused without a forward pass.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import structlog
from numpy.typing import NDArray

from .engine import Abort, SynthesisAborted, Synthesizer

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


@dataclass(eq=False)
class _Job:
    text: str
    voice: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Synthesis]
    queued_at: float = field(default_factory=time.monotonic)
    abort: Abort = field(default_factory=Abort)

    def settle(self, outcome: Synthesis | BaseException) -> None:
        """On the event loop: hand the outcome over unless the caller is gone."""
        if self.future.done():
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


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
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._running: set[_Job] = set()
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._cache: OrderedDict[tuple[str, str], NDArray[np.float32]] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_max_chars = cache_max_chars

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"tts-synth-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def close(self) -> None:
        """Abort queued and running jobs and wait for the threads to end."""
        with self._cond:
            self._closing = True
            jobs = [job for _, _, job in self._heap] + list(self._running)
            self._heap.clear()
            self._cond.notify_all()
        for job in jobs:
            job.abort.set()
            job.settle(SynthesisAborted("the scheduler is closing"))
        for thread in self._threads:
            await asyncio.to_thread(thread.join, 10.0)
        self._threads.clear()

    def queued(self) -> int:
        with self._cond:
            return len(self._heap)

    async def synthesize(self, text: str, voice: str, *, deadline: float) -> Synthesis:
        """Audio for ``text``; ``deadline`` (``time.monotonic`` scale) orders the queue.

        Raises ``SynthesisAborted`` when the scheduler closes; cancelling the caller aborts the
        job. Engine errors propagate.
        """
        key = (voice, text)
        if (hit := self._cache_get(key)) is not None:
            self.stats.cache_hits += 1
            return Synthesis(hit, 0.0, 0.0, cached=True)
        loop = asyncio.get_running_loop()
        job = _Job(text, voice, loop, loop.create_future())
        with self._cond:
            if self._closing:
                raise SynthesisAborted("the scheduler is closing")
            heapq.heappush(self._heap, (deadline, next(self._order), job))
            self._cond.notify()
        try:
            result = await job.future
        except asyncio.CancelledError:
            job.abort.set()  # queued: skipped; running: the forward pass stops
            raise
        self._cache_put(key, result.audio)
        return result

    # -- threads ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._heap and not self._closing:
                    self._cond.wait()
                if self._closing:
                    return
                _, _, job = heapq.heappop(self._heap)
                if job.abort.is_set():
                    continue
                self._running.add(job)
            self._run(job)
            with self._cond:
                self._running.discard(job)

    def _run(self, job: _Job) -> None:
        started = time.monotonic()
        outcome: Synthesis | BaseException
        try:
            audio = self.engine.synthesize(job.text, job.voice, abort=job.abort)
        except SynthesisAborted as exc:
            with self._cond:
                self.stats.aborted += 1
            outcome = exc
            log.debug("synthesis_aborted", ran_ms=round((time.monotonic() - started) * 1e3, 1))
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting handler
            outcome = exc
        else:
            synth_s = time.monotonic() - started
            with self._cond:
                self.stats.units += 1
                self.stats.synth_s += synth_s
                self.stats.audio_s += audio.size / self.engine.sample_rate_hz
            outcome = Synthesis(audio, synth_s, started - job.queued_at)
        try:
            job.loop.call_soon_threadsafe(job.settle, outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

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
