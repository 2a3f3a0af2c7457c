"""A caller session's audio going up: the caller's microphone to the bus.

The SDK resamples the microphone to 16 kHz mono; it is cut into 20 ms ``AudioIn`` frames and
handed to ``CallerAudio``, which keeps them in order while the bus is down and drops the oldest
past its backlog (a log line, and an ``ErrorEvent`` once the bus is back, say so).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog
from livekit import rtc

from voxbus.contracts.messages import KEY_CHARS, AudioIn, ErrorEvent, Message
from voxbus.runtime.bus import Bus
from voxbus.runtime.caller_audio import CallerAudio
from voxbus.runtime.tasks import TaskSet, cancel_and_wait
from voxbus.services.bridge.audio import FrameBatcher
from voxbus.services.bridge.settings import BridgeSettings


class Mic:
    """One caller's microphone track, read from ``listen`` until ``close``."""

    def __init__(
        self,
        bus: Bus,
        region: str,
        settings: BridgeSettings,
        *,
        session: str,
        log: structlog.typing.FilteringBoundLogger,
        tasks: TaskSet,
        publish_ctl: Callable[[Message], None],
        turns_heard: Callable[[], int],
    ) -> None:
        self.bus = bus
        self.region = region
        self.s = settings
        self.session = session
        self.log = log
        self._tasks = tasks
        self._publish_ctl = publish_ctl
        self._turns_heard = turns_heard
        self.first_audio_in_ns = 0
        self.frames_in = 0
        self.frames_dropped = 0
        self.purged = False  # being purged: nothing more is sent, nothing unsent is flushed
        self._outage_logged = False
        self._audio: CallerAudio | None = None
        self._seq = 0
        self._keys = ""  # telephone keys pressed since the last frame
        self._listening = False
        self._track: rtc.Track | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def track_sid(self) -> str:
        """The microphone track's sid ("" without one)."""
        return self._track.sid if self._track else ""

    async def open(self) -> None:
        """Connect to the bus (the frames' acknowledgements)."""
        self._audio = await CallerAudio(
            self.bus, self.region, ack_timeout_s=self.s.publish_timeout_s,
            backlog_s=self.s.audio_backlog_s, frame_s=self.s.frame_ms / 1000,
            name=self.session, on_dropped=self._dropped, on_recovered=self._recovered).start()

    def listen(self) -> None:
        """The session is ready: read the microphone from now on (once there is one)."""
        self._listening = True
        if self._track is not None:
            self._start(self._track)

    def attach(self, track: rtc.Track) -> None:
        if self._track is not None and self._task is not None and not self._task.done():
            self.log.info("extra_audio_track_ignored", track=track.sid)
            return
        self._track = track
        if self._listening:
            self._start(track)

    def detach(self, track: rtc.Track) -> None:
        if self._track is not None and self._track.sid == track.sid:
            self._track = None
            if self._task is not None:
                self._task.cancel()

    def purge(self) -> None:
        """The session is being purged: send nothing more, and flush nothing on ``close``."""
        self.purged = True

    async def close(self) -> None:
        """Stop reading; what the caller said last is stored first (unless purged)."""
        self._listening = False
        await cancel_and_wait(self._task)
        if self._audio is not None:
            if not self.purged:
                await self._audio.flush(self.s.publish_timeout_s * 2)
            await self._audio.close()

    def _start(self, track: rtc.Track) -> None:
        self._task = self._tasks.spawn(self._read(track), name=f"mic-{self.session}")

    async def _read(self, track: rtc.Track) -> None:
        rate = self.s.input_sample_rate_hz
        batcher = FrameBatcher(rate * self.s.frame_ms // 1000)
        stream = rtc.AudioStream(
            track, sample_rate=rate, num_channels=1, frame_size_ms=self.s.frame_ms,
            capacity=self.s.mic_queue_frames,
        )
        self.log.info("mic_attached", track=track.sid)
        try:
            async for ev in stream:
                for pcm in batcher.push(ev.frame.data.tobytes()):
                    await self._send(pcm)
        finally:
            await stream.aclose()
            self.log.info("mic_detached", track=track.sid, frames_in=self.frames_in)

    async def _send(self, pcm: bytes) -> None:
        if self.purged or self._audio is None:
            return
        now_ns = time.time_ns()
        keys, self._keys = self._keys, ""
        msg = AudioIn(
            session=self.session, seq=self._seq, sample_rate_hz=self.s.input_sample_rate_hz,
            capture_ns=now_ns, pcm=pcm, turns_heard=self._turns_heard(), keys=keys,
        )
        self._seq += 1
        await self._audio.send(msg)
        if self.frames_in == 0:
            self.first_audio_in_ns = now_ns
        self.frames_in += 1

    def press(self, keys: str) -> None:
        """Telephone keys the caller pressed: they go with the next frame, in order with the
        audio (the STT makes a turn of them)."""
        keys = "".join(k for k in keys.upper() if k in KEY_CHARS)
        self._keys = (self._keys + keys)[-64:]

    def _dropped(self, dropped: int) -> None:
        """The backlog of unstored frames overflowed (a long outage): its oldest went."""
        if self.frames_dropped == 0 or not self._outage_logged:
            self.log.warning("bus_down_audio_dropped", seq=self._seq - 1)
            self._outage_logged = True
        self.frames_dropped = dropped

    def _recovered(self, dropped: int, outage_s: float) -> None:
        self._outage_logged = False
        self.log.warning("bus_back_audio_resumed", dropped=dropped, outage_s=round(outage_s, 2))
        if dropped:
            self._publish_ctl(ErrorEvent(
                session=self.session, code="audio_dropped", stage="bridge", at_ns=time.time_ns(),
                message=f"{dropped} caller frames dropped during a {outage_s:.1f} s bus "
                        f"outage (the oldest past {self.s.audio_backlog_s:g} s)",
            ))
