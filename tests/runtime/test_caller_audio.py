"""Caller audio catches up after the stream stalled, even in a busy process: frames are not sent
one round trip at a time once the stream stores again (``runtime.caller_audio``), on a real
nats-server frozen with ``SIGSTOP``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from tests.conftest import REGION
from voxbus.contracts.messages import AudioIn
from voxbus.ops.nats import EmbeddedNats
from voxbus.runtime.bus import Bus
from voxbus.runtime.caller_audio import CallerAudio
from voxbus.runtime.testing import stored_caller_frames

FREEZE_S = 1.0
TALK_S = 6.0
#: Each turn of the event loop blocks this long, as a bridge busy with two rooms' audio does:
#: longer than half a frame, so a backlog sent one round trip per frame never drains.
BUSY_S = 0.015


async def _busy_loop() -> None:
    while True:
        time.sleep(BUSY_S)  # noqa: ASYNC251 - the point: it blocks the event loop
        await asyncio.sleep(0)


async def test_a_backlog_drains_at_once_when_the_stream_stores_again(
    nats_server: EmbeddedNats, bus: Bus
) -> None:
    assert nats_server._proc is not None
    audio = await CallerAudio(bus, REGION, name="busy").start()
    busy = asyncio.create_task(_busy_loop())
    frames = 0
    try:
        start = time.monotonic()
        frozen_at = start + 1.0
        frozen = False
        while time.monotonic() - start < TALK_S:
            now = time.monotonic()
            if not frozen and now >= frozen_at:
                nats_server._proc.send_signal(signal.SIGSTOP)
                frozen = True
            elif frozen and now >= frozen_at + FREEZE_S and nats_server._proc is not None:
                nats_server._proc.send_signal(signal.SIGCONT)
                frozen_at = float("inf")
            await audio.send(AudioIn(session="busy", seq=frames, sample_rate_hz=16000,
                                     capture_ns=time.time_ns(), pcm=b"\1\0" * 320))
            frames += 1
            await asyncio.sleep(max(0.0, start + frames * 0.02 - time.monotonic()))
        assert not audio.recovering, (
            f"still recovering {TALK_S - 1.0 - FREEZE_S:.0f} s after the stream came back, "
            f"{audio.pending} frames behind")
        await audio.flush(10.0)
    finally:
        busy.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await busy
        nats_server._proc.send_signal(signal.SIGCONT)
        await audio.close()
    assert audio.recoveries >= 1 and audio.dropped == 0
    assert audio.pending == 0, f"{audio.pending} frames never stored"
    assert audio.last_outage_s < FREEZE_S + 1.5, f"caught up after {audio.last_outage_s:.2f} s"
    seqs = await stored_caller_frames(bus, REGION, "busy")
    assert sorted(set(seqs)) == list(range(frames)), f"stored {len(set(seqs))} of {frames}"
