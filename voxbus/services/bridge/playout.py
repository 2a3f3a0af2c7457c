"""One agent audio track per room: an ``AudioSource`` with a small queue, fed in real time.

TTS runs ahead of real time, so frames wait here (bounded) and go into the source one at a time;
``capture_frame`` returns as soon as the frame is in the source's queue and blocks while the queue
is full, which paces the loop. The ledger knows when each frame starts and ends playing, so a
barge-in knows exactly which frames the caller heard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable

import structlog
from livekit import rtc

from voxbus.services.bridge.audio import AgentFrame, PlayoutLedger

log = structlog.get_logger("voxbus.bridge.playout")

FrameHook = Callable[[AgentFrame], None]


class Playout:
    def __init__(
        self,
        source: rtc.AudioSource,
        *,
        room: str,
        max_pending_frames: int,
        on_started: FrameHook,
        on_finished: FrameHook,
    ) -> None:
        self.source = source
        self.room = room
        self.rate = source.sample_rate
        self.max_pending = max_pending_frames
        self._on_started = on_started
        self._on_finished = on_finished
        self._pending: deque[AgentFrame] = deque()
        self._ledger = PlayoutLedger()
        self._wake = asyncio.Event()
        self._capturing: AgentFrame | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self.dropped_full = 0
        self.played = 0

    # ---- producer side (NATS callbacks) -------------------------------------------------------

    def push(self, f: AgentFrame) -> bool:
        """Queue a frame for playout; False (frame dropped) when the room's buffer is full."""
        if len(self._pending) >= self.max_pending:
            self.dropped_full += 1
            if self.dropped_full == 1 or self.dropped_full % 500 == 0:
                log.warning("playout_full_frame_dropped", pii={"room": self.room},
                            session=f.session, turn=f.turn, dropped=self.dropped_full,
                            pending=len(self._pending))
            return False
        self._pending.append(f)
        self._wake.set()
        return True

    def pending_frames(self, session: str | None = None) -> int:
        return sum(1 for f in self._pending if session is None or f.session == session)

    def queued_s(self) -> float:
        return self._ledger.queued_s(time.monotonic())

    def busy(self, session: str) -> bool:
        """True while frames of ``session`` wait or play."""
        now = time.monotonic()
        self._settle(now)
        return (
            any(f.session == session for f in self._pending)
            or any(f.session == session for f in self._ledger.unplayed())
            or (self._capturing is not None and self._capturing.session == session)
        )

    # ---- barge-in / session end ---------------------------------------------------------------

    def cancel(self, hit: Callable[[AgentFrame], bool]) -> tuple[int, int]:
        """Drop every frame ``hit`` selects, now: pending ones, and (clearing the source's queue)
        queued ones. Frames of other sessions that were queued go back to the front of the line.
        Returns (pending dropped, queued dropped)."""
        queued, pending = self._remove(hit)
        return len(pending), len(queued)

    def take(self, hit: Callable[[AgentFrame], bool]) -> list[AgentFrame]:
        """Stop every frame ``hit`` selects now, as ``cancel`` does, and hand them back unplayed
        in playing order (copies, never played, that may be pushed again: a paused reply)."""
        queued, pending = self._remove(hit)
        return [dataclasses.replace(f, cancelled=False, start_t=0.0, end_t=0.0)
                for f in (*queued, *pending)]

    def _remove(self, hit: Callable[[AgentFrame], bool]) -> tuple[list[AgentFrame],
                                                                  list[AgentFrame]]:
        """Take the frames ``hit`` selects out of the line, marked cancelled: (those in or
        entering the source's queue, those pending), each in playing order."""
        now = time.monotonic()
        self._settle(now)
        keep: deque[AgentFrame] = deque()
        pending: list[AgentFrame] = []
        for f in self._pending:
            (pending if hit(f) else keep).append(f)
        self._pending = keep
        queued: list[AgentFrame] = []
        capturing = self._capturing
        inflight = capturing is not None and hit(capturing)
        if inflight or any(hit(f) for f in self._ledger.unplayed()):
            self.source.clear_queue()
            dropped = self._ledger.clear(now)
            others = [f for f in dropped if not hit(f)]
            queued = [f for f in dropped if hit(f)]
            if others:
                for f in reversed(others):
                    self._pending.appendleft(f)
                self._wake.set()
        if inflight and capturing is not None:
            queued.append(capturing)  # captured after those the source had already
        for f in (*queued, *pending):
            f.cancelled = True
        return queued, pending

    # ---- the loop -----------------------------------------------------------------------------

    def _settle(self, now: float) -> None:
        for f in self._ledger.settle(now):
            self.played += 1
            self._on_started(f)

    def _finish(self, f: AgentFrame, handle_box: list[asyncio.TimerHandle]) -> None:
        for h in handle_box:
            self._timers.discard(h)
        self._settle(time.monotonic())
        if not f.cancelled:
            self._on_finished(f)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wake.clear()
                await self._wake.wait()
            f = self._pending.popleft()
            frame = rtc.AudioFrame(f.pcm, self.rate, 1, len(f.pcm) // 2)
            self._capturing = f
            at = time.monotonic()
            try:
                await self.source.capture_frame(frame)
            finally:
                self._capturing = None
            if f.cancelled:  # barge-in while it was being captured: it must not play
                self.source.clear_queue()
                self._ledger.clear(time.monotonic())
                continue
            self._ledger.captured(f, at)
            self._settle(time.monotonic())
            if f.last:
                box: list[asyncio.TimerHandle] = []
                h = loop.call_later(
                    max(0.0, f.end_t - time.monotonic()), self._finish, f, box
                )
                box.append(h)
                self._timers.add(h)

    def close(self) -> None:
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        self._pending.clear()
