"""Caller audio into its region's stream: sent without waiting, never silently lost.

A caller's 20 ms frames cannot wait for a round trip each, so they go out at once; but the
stream must store every one, or the STT hears a turn with a hole in it. A replicated stream
whose leader was just killed takes 4-9 s to elect another (NATS raft's election timeout), and
stores nothing meanwhile; a broken connection stores nothing either. So each frame carries a
reply subject and the stream's acknowledgement comes back in the background. When one fails
or is late (``ack_timeout_s``), every frame from the oldest unacknowledged one on is sent again,
one at a time and in order, each waiting for its acknowledgement, and new frames queue behind
them until the backlog is through; then frames go out at once again. A frame's message id
(``<session>.in.<seq>``) makes a copy that did reach the stream harmless.

The backlog is bounded (``backlog_s`` of audio): past it the oldest frames are dropped and
counted (``on_dropped``), so a long outage costs its oldest audio, not unbounded memory, and
the caller's latest words arrive first when the bus is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from voxbus.contracts import subject_for
from voxbus.contracts.messages import MSG_ID_HEADER, AudioIn
from voxbus.runtime import tracing
from voxbus.runtime.bus import Bus
from voxbus.runtime.tasks import TaskSet

log = structlog.get_logger("voxbus.caller_audio")


def audio_id(msg: AudioIn) -> str:
    """A caller frame's message id: the stream keeps one copy of a frame sent twice."""
    return f"{msg.session}.in.{msg.seq}"


def _acked(m: Msg) -> bool:
    """A stream's acknowledgement (``{"stream":..., "seq":...}``), not an error or a 503."""
    if not m.data:
        return False  # a status message (503: no stream is listening: no leader)
    try:
        ack = json.loads(m.data)
    except ValueError:
        return False
    return isinstance(ack, dict) and "seq" in ack and "error" not in ack


@dataclass
class _Frame:
    subject: str
    payload: bytes
    headers: dict[str, str]
    token: int = 0
    sent: float = 0.0
    failed: bool = False


class CallerAudio:
    """One caller's frames into ``region`` on ``bus`` (``send``), acknowledged in the background.
    ``on_dropped(n)`` is told how many frames the bounded backlog dropped so far;
    ``on_recovered(dropped, outage_s)`` once a backlog is through."""

    def __init__(self, bus: Bus, region: str, *, ack_timeout_s: float = 0.5,
                 backlog_s: float = 10.0, frame_s: float = 0.02, name: str = "caller",
                 on_dropped: Callable[[int], None] | None = None,
                 on_recovered: Callable[[int, float], None] | None = None) -> None:
        self.bus = bus
        self.region = region
        self.ack_timeout_s = ack_timeout_s
        self.max_backlog = max(1, int(backlog_s / frame_s))
        self.dropped = 0  # frames the backlog dropped, in all
        self.resent = 0  # frames sent again
        self.recoveries = 0
        self.last_outage_s = 0.0  # the last backlog: from its first frame to its last stored
        self._on_dropped = on_dropped
        self._on_recovered = on_recovered
        self._inbox = bus.nc.new_inbox()
        self._sub: Subscription | None = None
        self._inflight: dict[int, _Frame] = {}  # sent, not yet acknowledged, in send order
        self._backlog: deque[_Frame] = deque()  # to send one at a time, in order
        self._recovering_since = 0.0
        self._dropped_in_outage = 0
        self._token = 0
        self._wake = asyncio.Event()
        self._stored = asyncio.Event()  # set while nothing is pending
        self._stored.set()
        self._tasks = TaskSet(f"caller-audio-{name}")

    @property
    def recovering(self) -> bool:
        return bool(self._recovering_since)

    @property
    def pending(self) -> int:
        """Frames not yet known to be stored."""
        return len(self._inflight) + len(self._backlog)

    async def start(self) -> CallerAudio:
        self._sub = await self.bus.nc.subscribe(f"{self._inbox}.*", cb=self._on_ack)
        self._tasks.spawn(self._run(), name="caller-audio")
        return self

    async def close(self) -> None:
        await self._tasks.close()
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await self._sub.unsubscribe()
            self._sub = None

    async def send(self, msg: AudioIn) -> None:
        """Queue ``msg`` for the stream; never waits for it to be stored."""
        headers = {MSG_ID_HEADER: audio_id(msg)}
        if self.bus.tracing:
            with tracing.publishing(msg) as trace_headers:
                headers |= trace_headers
        f = _Frame(subject_for(self.region, msg), await self.bus.encoded(self.region, msg),
                   headers)
        self._stored.clear()
        if self._recovering_since or not self.bus.nc.is_connected:
            self._queue(f)
            return
        self._token += 1
        f.token, f.sent = self._token, time.monotonic()
        self._inflight[f.token] = f
        try:
            await self.bus.nc.publish(f.subject, f.payload, reply=f"{self._inbox}.{f.token}",
                                      headers=f.headers)
        except Exception:  # noqa: BLE001 - the connection broke under us: resent from the backlog
            f.failed = True
            self._wake.set()

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Until every frame sent so far is stored (or ``timeout_s``)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stored.wait(), timeout_s)

    def _check_stored(self) -> None:
        if not self.pending:
            self._stored.set()

    # ---- background ---------------------------------------------------------------------------

    async def _on_ack(self, m: Msg) -> None:
        try:
            token = int(m.subject.rsplit(".", 1)[1])
        except ValueError:
            return
        f = self._inflight.get(token)
        if f is None:
            return  # late: the frame was moved to the backlog already
        if _acked(m):
            del self._inflight[token]
            self._check_stored()
        else:
            f.failed = True
            self._wake.set()

    def _queue(self, f: _Frame) -> None:
        self._backlog.append(f)
        if not self._recovering_since:
            self._begin_recovery()
        while len(self._backlog) > self.max_backlog:
            self._backlog.popleft()
            self.dropped += 1
            self._dropped_in_outage += 1
            if self._on_dropped is not None:
                self._on_dropped(self.dropped)
        self._wake.set()

    def _begin_recovery(self) -> None:
        self._recovering_since = time.monotonic()
        self.recoveries += 1
        log.warning("caller_audio_unacked", region=self.region, inflight=len(self._inflight))

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ack_timeout_s / 4):
                    await self._wake.wait()
            self._wake.clear()
            now = time.monotonic()
            if self._inflight and any(f.failed or now - f.sent > self.ack_timeout_s
                                      for f in self._inflight.values()):
                # everything from the oldest unacknowledged frame on goes again, in order
                again = list(self._inflight.values())
                self._inflight.clear()
                if not self._recovering_since:
                    self._begin_recovery()
                self._backlog.extendleft(reversed(again))
            if self._recovering_since:
                await self._drain()

    async def _drain(self) -> None:
        """Send the backlog one frame at a time, each acknowledged before the next."""
        while self._backlog:
            f = self._backlog[0]
            try:
                reply = await self.bus.nc.request(f.subject, f.payload,
                                                  timeout=self.ack_timeout_s, headers=f.headers)
            except Exception:  # noqa: BLE001 - no leader, no connection yet: try again soon
                await asyncio.sleep(0.1)
                continue
            if not _acked(reply):
                await asyncio.sleep(0.1)
                continue
            if self._backlog and self._backlog[0] is f:
                self._backlog.popleft()
                self.resent += 1
        self._check_stored()
        outage_s = self.last_outage_s = time.monotonic() - self._recovering_since
        dropped, self._dropped_in_outage = self._dropped_in_outage, 0
        self._recovering_since = 0.0
        log.info("caller_audio_recovered", region=self.region, resent=self.resent,
                 dropped=dropped, outage_s=round(outage_s, 2))
        if self._on_recovered is not None:
            self._on_recovered(dropped, outage_s)
