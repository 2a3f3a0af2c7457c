"""The worker-wide synthesis scheduler and aborting a Kokoro forward pass."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.tts.conftest import abort_midway
from voxbus.runtime.engine_thread import Abort
from voxbus.services.tts.engine import KokoroEngine, SynthesisAborted
from voxbus.services.tts.fake import FakeSynthesizer
from voxbus.services.tts.scheduler import SynthScheduler

LONG = (
    "The quick brown fox jumps over the lazy dog while the pharmacy closes at nine tonight, "
    "so please hurry."
)


@pytest.mark.fast
async def test_earliest_deadline_first() -> None:
    fake = FakeSynthesizer(delay_s=0.05)
    scheduler = SynthScheduler(fake)
    scheduler.start()
    try:
        busy = asyncio.ensure_future(scheduler.synthesize("busy", "af_heart", deadline=0))
        await asyncio.sleep(0.01)  # "busy" runs; the rest queue up
        late = asyncio.ensure_future(scheduler.synthesize("late", "af_heart", deadline=9))
        soon = asyncio.ensure_future(scheduler.synthesize("soon", "af_heart", deadline=1))
        await asyncio.gather(busy, late, soon)
    finally:
        await scheduler.close()
    assert [c.text for c in fake.calls] == ["busy", "soon", "late"]
    assert scheduler.stats.units == 3


@pytest.mark.fast
async def test_a_cancelled_caller_aborts_its_job() -> None:
    fake = FakeSynthesizer(delay_s=[5.0, 0.0])
    scheduler = SynthScheduler(fake)
    scheduler.start()
    try:
        running = asyncio.ensure_future(scheduler.synthesize("slow", "af_heart", deadline=0))
        queued = asyncio.ensure_future(scheduler.synthesize("queued", "af_heart", deadline=1))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        running.cancel()
        queued.cancel()
        after = await scheduler.synthesize("next", "af_heart", deadline=2)
        waited = time.monotonic() - started
    finally:
        await scheduler.close()
    assert after.audio.size > 0 and waited < 0.5
    assert [c.text for c in fake.calls] == ["slow", "next"], "the queued job never ran"
    assert scheduler.stats.aborted == 1


@pytest.mark.fast
async def test_short_units_are_cached() -> None:
    fake = FakeSynthesizer()
    scheduler = SynthScheduler(fake, cache_entries=2, cache_max_chars=10)
    scheduler.start()
    try:
        for text in ("Sure,", "Sure,", "Okay.", "Right.", "Sure,", "A much longer unit."):
            await scheduler.synthesize(text, "af_heart", deadline=0)
        hit = await scheduler.synthesize("Right.", "af_heart", deadline=0)
        other_voice = await scheduler.synthesize("Right.", "bf_emma", deadline=0)
    finally:
        await scheduler.close()
    assert hit.cached and not other_voice.cached
    assert [c.text for c in fake.calls] == [
        "Sure,", "Okay.", "Right.", "Sure,", "A much longer unit.", "Right."
    ]
    assert not hit.audio.flags.writeable


@pytest.mark.fast
async def test_closing_fails_waiting_callers() -> None:
    scheduler = SynthScheduler(FakeSynthesizer(delay_s=5.0))
    scheduler.start()
    job = asyncio.ensure_future(scheduler.synthesize("slow", "af_heart", deadline=0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await scheduler.close()
    with pytest.raises(SynthesisAborted):
        await job
    assert time.monotonic() - started < 1.0


@pytest.mark.model
def test_abort_stops_a_kokoro_forward_pass(kokoro: KokoroEngine) -> None:
    outcome, stopped_s = abort_midway(kokoro, LONG, after_s=0.3)
    assert isinstance(outcome, SynthesisAborted)
    # loose: a loaded 2-core machine can hold the thread off the CPU for a while
    assert stopped_s < 1.0, f"the forward pass ran {stopped_s:.3f} s after the abort"
    assert kokoro.synthesize("Still works.", abort=Abort()).size > 0
    spent = Abort()
    spent.set()  # an abort already set stops the next synthesis before it starts
    with pytest.raises(SynthesisAborted):
        kokoro.synthesize("Too late.", abort=spent)
