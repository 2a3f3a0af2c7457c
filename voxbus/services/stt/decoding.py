"""Decoding off the event loop: an engine on its own thread behind a slot (one decode at a time),
optionally at low thread priority so a decode elsewhere in the process takes the CPU from it."""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog

from voxbus.audio import Float32Array
from voxbus.runtime.threads import lower_thread_priority
from voxbus.services.stt.engine import Transcriber, TranscriptResult, WhisperEngine
from voxbus.services.stt.settings import SttSettings

log = structlog.get_logger("voxbus.stt")

_T = TypeVar("_T")


class DecodeSlot:
    """The right to decode on one engine: ``take`` waits in FIFO order (finals); ``try_take``
    never waits and fails while anyone holds or waits for it (partials)."""

    def __init__(self) -> None:
        self._held = False
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def busy(self) -> bool:
        return self._held or bool(self._waiters)

    def try_take(self) -> bool:
        if self.busy:
            return False
        self._held = True
        return True

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # handed over as we were cancelled
                self.give()
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # handed over: stays held
                return
        self._held = False


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    try:
        loop.call_soon_threadsafe(fn)
    except RuntimeError:  # the loop is closed: nobody is left to wait for the slot
        pass


def build_engine(settings: SttSettings) -> WhisperEngine:
    """Load the configured Whisper model (blocking). CTranslate2's compute threads inherit the
    priority of the thread that calls this."""
    s = settings
    return WhisperEngine(model=s.model, device=s.device, compute_type=s.compute_type,
                         cpu_threads=s.cpu_threads, language=s.language, beam_size=s.beam_size)


class Decoder:
    """An engine on its own thread, behind a slot: one decode at a time.

    A decode whose caller is cancelled (a discarded speculative final) still finishes in its
    thread and holds the slot until then, so nothing slips in and queues behind it.
    With ``nice`` > 0 the thread runs at lower priority, and so do CTranslate2's compute threads
    when ``load`` builds the engine there: a final decoding meanwhile takes the CPU from it.
    """

    def __init__(self, *, name: str, nice: int = 0) -> None:
        self.name = name
        self.slot = DecodeSlot()
        self._engine: Transcriber | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name,
                                        initializer=lower_thread_priority, initargs=(nice,))

    @property
    def engine(self) -> Transcriber:
        if self._engine is None:
            raise RuntimeError(f"decoder {self.name} has no engine")
        return self._engine

    def use(self, engine: Transcriber) -> None:
        self._engine = engine

    async def load(self, factory: Callable[[], Transcriber]) -> float:
        """Build the engine on this decoder's thread; returns the seconds it took."""
        started = time.perf_counter()
        self._engine = await asyncio.wrap_future(self._pool.submit(factory))
        return time.perf_counter() - started

    async def warmup(self) -> float:
        started = time.perf_counter()
        await self.slot.take()
        await self._submit(self.engine.warmup)
        return time.perf_counter() - started

    async def run(
        self, audio: Float32Array, *, partial: bool, slot_taken: bool = False
    ) -> TranscriptResult:
        if not slot_taken:
            await self.slot.take()
        return await self._submit(functools.partial(self.engine.transcribe, audio, partial=partial))

    async def _submit(self, fn: Callable[[], _T]) -> _T:
        loop = asyncio.get_running_loop()
        try:
            cf: ThreadFuture[_T] = self._pool.submit(fn)
        except BaseException:
            self.slot.give()
            raise
        cf.add_done_callback(lambda _f: _call_soon(loop, self.slot.give))
        return await asyncio.wrap_future(cf)

    async def close(self) -> None:
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)
