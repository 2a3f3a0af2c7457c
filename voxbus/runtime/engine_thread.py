"""One primitive for the blocking engines (Whisper, Kokoro, llama.cpp): dedicated threads at a
chosen priority that run jobs earliest deadline first, abort the running job on request, and hand
results, or a stream of items, back to the event loop.

- **Priority.** With ``nice`` > 0 the threads run at lower priority (Linux, per thread), and so do
  the compute threads an engine starts from them: build the engine with ``run`` on its own
  ``EngineThread`` and its inference threads inherit the value. Work a caller waits for (a final
  transcript, a first clause) then takes the cores from work that can wait.
- **Order.** Jobs are taken by ``deadline`` (``time.monotonic`` scale; default: when submitted,
  so FIFO), ties in submission order.
- **Abort.** Cancelling the coroutine that awaits a job (or ``JobHandle.abort``) sets the job's
  ``Abort``: a queued job never starts; a running one is told (``abort.is_set()``, or a hook
  registered with ``abort.on_set``, e.g. onnxruntime's terminate flag) and its result is
  discarded. An engine that cannot stop (a CTranslate2 decode) finishes in its thread, which stays
  ``busy`` until then, so nothing slips in and queues behind it.
- **Results.** Outcomes are set on the loop with ``call_soon_threadsafe``; a job's exception is
  raised to its awaiter. ``stream`` jobs emit items as they go (llama.cpp's tokens).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from voxbus.runtime.threads import lower_thread_priority

log = structlog.get_logger("voxbus.engine_thread")

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - an item of a stream


class Abort:
    """Stops a job running in another thread. Thread-safe; ``set`` is idempotent.

    Engines poll ``is_set()`` or register a hook with ``on_set`` while they run; a job started
    after ``set`` should stop at once.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self._event.set()
            hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s``; true if set."""
        return self._event.wait(timeout_s)

    def on_set(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Run ``hook`` when set (now, if already set); returns a function that unregisters it."""
        with self._lock:
            if not self._event.is_set():
                self._hooks.append(hook)
                return lambda: self._remove(hook)
        hook()
        return lambda: None

    def _remove(self, hook: Callable[[], None]) -> None:
        with self._lock:
            if hook in self._hooks:
                self._hooks.remove(hook)


class EngineClosed(RuntimeError):
    """The engine thread was closed before the job ran."""


@dataclass(eq=False)
class _Job:
    fn: Callable[[Abort], Any]
    loop: asyncio.AbstractEventLoop
    result: asyncio.Future[Any]
    finished: asyncio.Future[None]  # the thread is done with it (aborted or not)
    abort: Abort = field(default_factory=Abort)
    queued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    ended_at: float = 0.0

    def settle(self, outcome: Any, error: BaseException | None) -> None:
        """On the loop: hand the outcome over unless the awaiter is gone."""
        if not self.result.done():
            if isinstance(error, asyncio.CancelledError):
                self.result.cancel()
            elif error is not None:
                self.result.set_exception(error)
            else:
                self.result.set_result(outcome)
        if not self.finished.done():
            self.finished.set_result(None)


class JobHandle(Generic[T]):
    """A submitted job: await it for the result. ``abort()`` stops it (see the module doc)."""

    def __init__(self, job: _Job) -> None:
        self._job = job

    @property
    def abort_flag(self) -> Abort:
        return self._job.abort

    @property
    def queued_s(self) -> float:
        """How long it waited for a thread (so far, if it has not started)."""
        end = self._job.started_at or time.monotonic()
        return end - self._job.queued_at

    @property
    def ran_s(self) -> float:
        """How long it ran in its thread (0 until it ended)."""
        j = self._job
        return j.ended_at - j.started_at if j.ended_at else 0.0

    def abort(self) -> None:
        self._job.abort.set()
        if not self._job.result.done():
            self._job.result.cancel()

    def __await__(self) -> Generator[Any, None, T]:
        try:
            result: T = yield from asyncio.shield(self._job.result).__await__()
        except asyncio.CancelledError:
            self.abort()
            raise
        return result


async def _wait(handle: JobHandle[T]) -> T:
    return await handle


class EngineThread:
    """``workers`` dedicated threads (one per engine instance they share) at ``nice``."""

    def __init__(self, name: str, *, nice: int = 0, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.name = name
        self.nice = nice
        self._heap: list[tuple[float, int, _Job]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._running: set[_Job] = set()
        self._pending: set[asyncio.Future[None]] = set()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    # ---- loop side ------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A job runs or waits (an aborted job still running counts: its thread is taken)."""
        with self._cond:
            return bool(self._running) or any(not j.abort.is_set() for _, _, j in self._heap)

    def queued(self) -> int:
        with self._cond:
            return sum(1 for _, _, j in self._heap if not j.abort.is_set())

    def submit(self, fn: Callable[[Abort], T], *, deadline: float | None = None) -> JobHandle[T]:
        """Queue ``fn(abort)`` (synchronously: ``if not t.busy: t.submit(...)`` cannot race)."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, loop.create_future(), loop.create_future())
        with self._cond:
            if self._closing:
                raise EngineClosed(f"engine thread {self.name} is closed")
            when = job.queued_at if deadline is None else deadline
            heapq.heappush(self._heap, (when, next(self._order), job))
            self._cond.notify()
        self._pending.add(job.finished)
        job.finished.add_done_callback(self._pending.discard)
        return JobHandle(job)

    async def run(self, fn: Callable[[Abort], T], *, deadline: float | None = None) -> T:
        """``fn(abort)`` on an engine thread; cancelling the caller aborts it."""
        return await self.submit(fn, deadline=deadline)

    async def stream(
        self, fn: Callable[[Abort, Callable[[I], None]], None], *, deadline: float | None = None
    ) -> AsyncGenerator[I, None]:
        """Items ``fn(abort, emit)`` emits, as they come. Closing the generator aborts the job:
        use ``contextlib.aclosing`` (an ``async for`` left by an exception does not close it)."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[I]] = asyncio.Queue()

        def job(abort: Abort) -> None:
            def emit(item: I) -> None:
                if not abort.is_set():
                    loop.call_soon_threadsafe(items.put_nowait, (item,))

            fn(abort, emit)

        handle = self.submit(job, deadline=deadline)
        done = asyncio.ensure_future(_wait(handle))
        try:
            while True:
                getter = asyncio.ensure_future(items.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()[0]
                    continue
                getter.cancel()
                while not items.empty():  # what it emitted before it returned
                    yield items.get_nowait()[0]
                await done  # raises the job's exception
                return
        finally:
            handle.abort()
            if not done.done():
                done.cancel()
            await asyncio.gather(done, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Until the threads are done with every job submitted so far (aborted ones included)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self, timeout_s: float = 10.0) -> None:
        """Abort queued and running jobs and wait for the threads to end."""
        with self._cond:
            self._closing = True
            jobs = [job for _, _, job in self._heap] + list(self._running)
            queued = [job for _, _, job in self._heap]
            self._heap.clear()
            self._cond.notify_all()
        for job in jobs:
            job.abort.set()
        for job in queued:
            job.settle(None, EngineClosed(f"engine thread {self.name} is closed"))
        for thread in self._threads:
            await asyncio.to_thread(thread.join, timeout_s)
            if thread.is_alive():
                log.error("engine_thread_did_not_stop", thread=thread.name)

    # ---- threads --------------------------------------------------------------------------------

    def _work(self) -> None:
        lower_thread_priority(self.nice)
        while True:
            with self._cond:
                while not self._heap and not self._closing:
                    self._cond.wait()
                if not self._heap:
                    return  # closing
                _, _, job = heapq.heappop(self._heap)
                if job.abort.is_set():
                    self._post(job, None, asyncio.CancelledError())
                    continue
                self._running.add(job)
            job.started_at = time.monotonic()
            outcome: Any = None
            error: BaseException | None = None
            try:
                outcome = job.fn(job.abort)
            except BaseException as e:  # noqa: BLE001 - handed to the awaiter
                error = e
            job.ended_at = time.monotonic()
            with self._cond:
                self._running.discard(job)
            self._post(job, outcome, error)

    @staticmethod
    def _post(job: _Job, outcome: Any, error: BaseException | None) -> None:
        try:
            job.loop.call_soon_threadsafe(job.settle, outcome, error)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass
