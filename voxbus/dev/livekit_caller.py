"""A scripted LiveKit caller: a participant with a microphone track fed from PCM (a WAV) in real
time, which records everything the agent says in the room (10 ms frames with arrival times and
the audio itself) and the room's captions. Used by ``voxbus demo``, ``voxbus bench voice
--livekit`` and the bridge tests.

Two ways to talk: ``play(pcm)`` writes frames straight into the track (nothing is sent before or
after), while ``start_mic()`` runs a microphone that always sends 20 ms frames, silence while idle,
like a real one, and ``say(pcm)`` speaks through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from livekit import api, rtc

from voxbus.services.bridge.audio import rms

#: Frames at or below this RMS (PCM16) count as silence when looking for the agent's voice.
SILENT_RMS = 200.0
#: The agent's audio is recorded at this rate (mono).
LISTEN_RATE_HZ = 24_000

Pcm16 = npt.NDArray[np.int16]


@dataclass
class Heard:
    """One 10 ms frame of the agent's track as the caller received it."""

    t: float  # time.monotonic() at arrival
    rms: float
    wall: float = 0.0  # time.time() at arrival
    pcm: bytes = b""


@dataclass
class Spoken:
    """An utterance said through the microphone (``say``): when its first and last frames went
    into the track (``time.monotonic()`` and ``time.time()``)."""

    started: float = 0.0
    started_wall: float = 0.0
    ended: float = 0.0
    samples: int = 0
    rate: int = 16_000

    def at(self, offset_s: float) -> float:
        """Monotonic time at which the sample ``offset_s`` into the utterance went out."""
        return self.started + offset_s

    def wall_at(self, offset_s: float) -> float:
        return self.started_wall + offset_s


@dataclass
class Caller:
    """A participant that publishes a microphone track and records what the agent says."""

    url: str
    key: str
    secret: str
    room_name: str
    identity: str = "caller-1"
    #: Participant attributes in the caller's token (``{"country": "US"}``: region routing).
    attributes: dict[str, str] = field(default_factory=dict)
    agent_identity: str = "voxbus-agent"
    rate: int = 16_000
    channels: int = 1
    #: Keep the agent's audio (``heard[i].pcm``), e.g. to write it to a WAV.
    keep_audio: bool = True
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[Heard] = field(default_factory=list)
    first_voice_sent: float = 0.0
    captions: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    connect_s: float = 0.0
    agent_track: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set once a remote participant (the agent) subscribed to our microphone.
    mic_subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    _source: rtc.AudioSource | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _mic_task: asyncio.Task[None] | None = None
    _pending: list[tuple[Pcm16, Spoken, asyncio.Future[Spoken]]] = field(default_factory=list)
    _heard_changed: asyncio.Event = field(default_factory=asyncio.Event)

    def token(self) -> str:
        return (
            api.AccessToken(self.key, self.secret)
            .with_identity(self.identity)
            .with_grants(api.VideoGrants(room_join=True, room=self.room_name))
            .with_attributes(self.attributes)
            .to_jwt()
        )

    async def join(self, *, publish: bool = True, timeout_s: float = 15.0) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("local_track_subscribed", lambda _track: self.mic_subscribed.set())
        self.room.register_text_stream_handler("lk.transcription", self._on_caption)
        t0 = time.perf_counter()
        await self.room.connect(self.url, self.token(),
                                rtc.RoomOptions(connect_timeout=timeout_s))
        self.connect_s = time.perf_counter() - t0
        if publish:
            self._source = rtc.AudioSource(self.rate, self.channels, queue_size_ms=100)
            track = rtc.LocalAudioTrack.create_audio_track("mic", self._source)
            await self.room.local_participant.publish_track(
                track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            )

    # ---- listening ----------------------------------------------------------------------------

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, p: rtc.RemoteParticipant
    ) -> None:
        if p.identity == self.agent_identity and track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    def _on_caption(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            self.captions.append((sender, text, dict(reader.info.attributes or {})))

        self._tasks.append(asyncio.create_task(read()))

    async def _listen(self, track: rtc.Track) -> None:
        self.agent_track.set()
        stream = rtc.AudioStream(track, sample_rate=LISTEN_RATE_HZ, num_channels=1,
                                 frame_size_ms=10)
        try:
            async for ev in stream:
                data = ev.frame.data.tobytes()
                self.heard.append(Heard(time.monotonic(), rms(data), time.time(),
                                        data if self.keep_audio else b""))
                self._heard_changed.set()
        finally:
            await stream.aclose()

    def first_voice_heard(
        self, after: float = 0.0, *, threshold: float = SILENT_RMS
    ) -> float | None:
        h = self.first_frame_heard(after, threshold=threshold)
        return None if h is None else h.t

    def first_frame_heard(self, after: float = 0.0, *,
                          threshold: float = SILENT_RMS) -> Heard | None:
        """The first frame louder than ``threshold`` that arrived at or after ``after``."""
        for h in self.heard:
            if h.t >= after and h.rms > threshold:
                return h
        return None

    async def wait_voice(self, after: float, timeout_s: float, *,
                         threshold: float = SILENT_RMS) -> Heard | None:
        """Wait until the agent's voice is heard after ``after`` (None: not within the time)."""
        deadline = time.monotonic() + timeout_s
        while True:
            h = self.first_frame_heard(after, threshold=threshold)
            if h is not None:
                return h
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._heard_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heard_changed.wait(), min(left, 0.2))

    def silent_since(self, after: float, *, hold_s: float = 0.2) -> float | None:
        """Start of the first stretch of at least ``hold_s`` silence after ``after``."""
        start: float | None = None
        for h in self.heard:
            if h.t < after:
                continue
            if h.rms <= SILENT_RMS:
                if start is None:
                    start = h.t
                if h.t - start >= hold_s:
                    return start
            else:
                start = None
        return None

    def voiced_after(self, t: float, until: float = float("inf")) -> int:
        return sum(1 for h in self.heard if t <= h.t < until and h.rms > SILENT_RMS)

    def audio_between(self, start: float, end: float = float("inf")) -> bytes:
        """The agent's audio (PCM16 mono at ``LISTEN_RATE_HZ``) of the frames that arrived in
        ``[start, end)`` (monotonic); needs ``keep_audio``."""
        return b"".join(h.pcm for h in self.heard if start <= h.t < end)

    # ---- talking ------------------------------------------------------------------------------

    async def play(self, pcm: Pcm16, *, frame_ms: int = 20) -> None:
        """Publish interleaved PCM16 paced like a microphone (by the wall clock)."""
        assert self._source is not None
        n = self.rate * frame_ms // 1000
        step = n * self.channels
        t0 = time.monotonic()
        for i in range(0, len(pcm) - step + 1, step):
            chunk = pcm[i : i + step]
            if not self.first_voice_sent and rms(chunk.tobytes()) > SILENT_RMS:
                self.first_voice_sent = time.monotonic()
            await self._source.capture_frame(rtc.AudioFrame(chunk.tobytes(), self.rate,
                                                            self.channels, n))
            delay = t0 + (i // step + 1) * frame_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    def start_mic(self, *, frame_ms: int = 20) -> None:
        """Send a frame every ``frame_ms`` from now on: what ``say`` queued, else silence."""
        assert self._source is not None, "join(publish=True) first"
        if self._mic_task is None:
            self._mic_task = asyncio.create_task(self._mic(frame_ms), name="caller-mic")

    async def say(self, pcm: Pcm16) -> Spoken:
        """Speak ``pcm`` (interleaved PCM16 at the caller's rate) through the running microphone,
        after what is already queued; returns when its last frame went out."""
        assert self._mic_task is not None, "start_mic() first"
        fut: asyncio.Future[Spoken] = asyncio.get_running_loop().create_future()
        spoken = Spoken(samples=len(pcm) // self.channels, rate=self.rate)
        self._pending.append((pcm, spoken, fut))
        return await fut

    async def _mic(self, frame_ms: int) -> None:
        assert self._source is not None
        n = self.rate * frame_ms // 1000
        step = n * self.channels
        silence = np.zeros(step, dtype=np.int16)
        current: tuple[Pcm16, Spoken, asyncio.Future[Spoken]] | None = None
        pos = 0
        t0 = time.monotonic()
        i = 0
        while True:
            if current is None and self._pending:
                current, pos = self._pending.pop(0), 0
            chunk = silence
            if current is not None:
                pcm, spoken, fut = current
                chunk = pcm[pos : pos + step]
                if len(chunk) < step:
                    chunk = np.concatenate([chunk, silence[: step - len(chunk)]])
                if pos == 0:
                    spoken.started, spoken.started_wall = time.monotonic(), time.time()
                pos += step
            await self._source.capture_frame(
                rtc.AudioFrame(chunk.tobytes(), self.rate, self.channels, n)
            )
            if current is not None and pos >= len(current[0]):
                pcm, spoken, fut = current
                spoken.ended = time.monotonic()
                if not fut.done():
                    fut.set_result(spoken)
                current = None
            i += 1
            delay = t0 + i * frame_ms / 1000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.2:  # fell far behind (a busy machine): start a new schedule
                t0, i = time.monotonic(), 0

    async def leave(self) -> None:
        if self._mic_task is not None:
            self._mic_task.cancel()
            await asyncio.gather(self._mic_task, return_exceptions=True)
        for _, _, fut in self._pending:
            if not fut.done():
                fut.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), 5.0)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._source is not None:
            await self._source.aclose()
