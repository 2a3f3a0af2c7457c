"""The engine-thread primitive: deadline order, abort, priority, streams, close."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable

import pytest

from voxbus.runtime.engine_thread import Abort, EngineClosed, EngineThread

pytestmark = pytest.mark.fast


async def test_jobs_run_earliest_deadline_first_and_return_results() -> None:
    t = EngineThread("t")
    gate, started = threading.Event(), threading.Event()
    order: list[str] = []
    def block(_a: Abort) -> bool:
        started.set()
        return gate.wait(5)

    def mark(name: str) -> Callable[[Abort], str]:
        def job(_a: Abort) -> str:
            order.append(name)
            return name[0].upper()

        return job

    blocker = t.submit(block)
    await asyncio.to_thread(started.wait, 5)
    now = time.monotonic()
    late = t.submit(mark("late"), deadline=now + 10)
    soon = t.submit(mark("soon"), deadline=now)
    fifo = t.submit(mark("fifo"))  # deadline: its submission time
    assert t.busy and t.queued() == 3
    gate.set()
    assert [await soon, await fifo, await late] == ["S", "F", "L"]
    assert await blocker is True
    assert order == ["soon", "fifo", "late"] and not t.busy
    await t.close()


async def test_cancelling_the_awaiter_aborts_the_running_job_and_skips_queued_ones() -> None:
    t = EngineThread("t")
    started = threading.Event()
    stopped_by_abort: list[bool] = []

    def long(abort: Abort) -> str:
        started.set()
        stopped_by_abort.append(abort.wait(5))
        return "too late"

    ran: list[int] = []
    running = asyncio.ensure_future(t.run(long))
    queued = asyncio.ensure_future(t.run(lambda _a: ran.append(1)))
    await asyncio.to_thread(started.wait, 5)
    queued.cancel()
    running.cancel()
    for task in (running, queued):
        with pytest.raises(asyncio.CancelledError):
            await task
    await t.wait_idle()
    assert stopped_by_abort == [True] and ran == [] and not t.busy
    await t.close()


async def test_an_aborted_job_that_cannot_stop_keeps_the_thread_busy() -> None:
    t = EngineThread("t")
    gate = threading.Event()
    h = t.submit(lambda _a: gate.wait(5))  # ignores its abort, like a CTranslate2 decode
    await asyncio.sleep(0.05)
    h.abort()
    assert t.busy
    gate.set()
    await t.wait_idle()
    assert not t.busy
    await t.close()


async def test_errors_reach_the_awaiter() -> None:
    t = EngineThread("t")

    def boom(_a: Abort) -> None:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        await t.run(boom)
    assert await t.run(lambda _a: 7) == 7
    await t.close()


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="needs per-thread priorities")
async def test_threads_run_at_their_nice_value() -> None:
    t = EngineThread("low", nice=7)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    got = await t.run(lambda _a: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    assert got == min(19, base + 7) or got == 7
    await t.close()


async def test_streams_deliver_items_and_stop_when_the_consumer_leaves() -> None:
    t = EngineThread("t")
    aborted = threading.Event()

    def tokens(abort: Abort, emit: Callable[[int], None]) -> None:
        for i in range(1000):
            if abort.is_set():
                aborted.set()
                return
            emit(i)
            time.sleep(0.002)

    got: list[int] = []
    async with contextlib.aclosing(t.stream(tokens)) as items:
        async for item in items:
            got.append(item)
            if len(got) == 5:
                break
    await t.wait_idle()
    assert got == [0, 1, 2, 3, 4] and aborted.is_set()

    def short(abort: Abort, emit: Callable[[str], None]) -> None:
        emit("a")
        emit("b")

    assert [x async for x in t.stream(short)] == ["a", "b"]
    await t.close()


async def test_close_aborts_everything_and_refuses_new_jobs() -> None:
    t = EngineThread("t")
    started = threading.Event()

    def wait_for_abort(abort: Abort) -> bool:
        started.set()
        return abort.wait(5)

    running = t.submit(wait_for_abort)
    queued = t.submit(lambda _a: "never")
    await asyncio.to_thread(started.wait, 5)
    await t.close()
    with pytest.raises(EngineClosed):
        await queued
    assert await running is True
    with pytest.raises(EngineClosed):
        t.submit(lambda _a: None)


def test_abort_hooks() -> None:
    abort = Abort()
    seen: list[str] = []
    unregister = abort.on_set(lambda: seen.append("a"))
    abort.on_set(lambda: seen.append("b"))
    unregister()
    abort.set()
    abort.set()
    abort.on_set(lambda: seen.append("late"))
    assert seen == ["b", "late"] and abort.is_set()
